"""The backend interface: what every LLM backend does (chat, streaming, label scoring) and
declares (:class:`Capabilities`). Resolution and loading: :mod:`medllm.models.backend`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from medllm.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from llama_index.core.llms import LLM

Messages = Sequence[dict[str, str]]

BACKENDS = ("transformers", "llama-cpp", "openai-compatible")

# Why each generation that ran to its end stopped: "length" (the token limit cut it) or "stop".
# A caller that needs it (the server's ``finish_reason``) sets a list here around the iteration
# of a stream; ``stream_chat`` appends to it. A context variable, not an attribute, so that
# concurrent requests each see their own. Nothing is recorded for a stream closed early.
finish_reasons: ContextVar[list[str] | None] = ContextVar("medllm_finish_reasons", default=None)


def record_finish(reason: str | None) -> None:
    log = finish_reasons.get()
    if log is not None and reason:
        log.append("length" if reason == "length" else "stop")


def finish_of(raw: Any) -> str | None:
    """The ``finish_reason`` of an OpenAI-style (completion or chat) chunk, dict or object."""
    choices = raw.get("choices") if isinstance(raw, dict) else getattr(raw, "choices", None)
    if not choices:
        return None
    c = choices[0]
    reason = c.get("finish_reason") if isinstance(c, dict) else getattr(c, "finish_reason", None)
    return reason if isinstance(reason, str) else None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do (``medllm models`` lists them)."""

    logprobs: bool  # label scoring from the model's own log-probabilities
    hidden_states: bool  # linear label heads (``medllm finetune --head linear``)
    lora: bool  # LoRA adapters applied when the model loads
    tool_calling: bool  # native (OpenAI-style) tool calls, for an agent loop


class OptionProbs(dict[str, float]):
    """``{option: probability}`` (sums to 1). ``warnings`` says what was approximated, e.g. an
    option missing from a server's top log-probabilities that was given a floor."""

    def __init__(self, probs: dict[str, float], warnings: Iterable[str] = ()):
        super().__init__(probs)
        self.warnings = list(warnings)


class Backend(ABC):
    """A loaded LLM behind one interface. Not thread-safe: callers serialise (the engine's
    lock)."""

    name: ClassVar[str]
    default_capabilities: ClassVar[Capabilities]
    capabilities: Capabilities  # this instance's (e.g. tool calling as the server declares)
    model: str  # the model's name as this backend knows it
    llm: LLM  # the same model as a LlamaIndex LLM (RAGAS judge, agent loops)
    scoring: str = "likelihood"  # how score_options works, for run configs
    # stream_chat continues ``prefix`` mid-sentence (a local model: the prompt ends with it);
    # a server answers in its own template, so the engine gives it whole sentences only
    continues_prefix: ClassVar[bool] = True

    @abstractmethod
    def stream_chat(
        self, messages: Messages, *, prefix: str = "", max_tokens: int | None = None
    ) -> Iterator[str]:
        """Text deltas of the assistant's reply. ``prefix`` is the start of the reply, already
        decided by the caller (e.g. "Yes. "): the deltas continue it and do not repeat it."""

    def chat(self, messages: Messages, *, max_tokens: int | None = None) -> str:
        return "".join(self.stream_chat(messages, max_tokens=max_tokens))

    @abstractmethod
    def score_batch(
        self,
        batch: Sequence[Messages],
        options: Sequence[str],
        *,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[OptionProbs]:
        """:meth:`score_options` for many conversations."""

    def _score_each(
        self,
        batch: Sequence[Messages],
        options: Sequence[str],
        one: Callable[[Messages], OptionProbs],
        *,
        progress: bool,
    ) -> list[OptionProbs]:
        """:meth:`score_batch` for a backend that scores one conversation at a time."""
        from tqdm.auto import tqdm

        if not options:
            raise ValueError("no options to score")
        return [one(m) for m in tqdm(batch, disable=not progress, desc="scoring", unit="item")]

    def score_options(self, messages: Messages, options: Sequence[str]) -> OptionProbs:
        """Probabilities over ``options`` as the first words of the assistant's reply."""
        return self.score_batch([messages], options)[0]

    def render(self, messages: Messages) -> str:
        """The prompt text the model sees (chat template + generation prompt)."""
        raise ModelNotAvailableError(
            f"the {self.name} backend formats prompts on the server; there is no local prompt"
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's tokenizer (local backends)."""
        raise ModelNotAvailableError(f"the {self.name} backend has no local tokenizer")

    def describe(self) -> dict[str, Any]:
        """For run configs and `medllm models`: never holds a secret."""
        return {
            "backend": self.name,
            "model": self.model,
            "scoring": self.scoring,
            "capabilities": asdict(self.capabilities),
        }

    def close(self) -> None:  # noqa: B027 - optional
        """Free what the backend holds (models, connections)."""


class LocalBackend(Backend):
    """An in-process model: prompts rendered here, generation through the LlamaIndex LLM's
    ``stream_complete`` on the rendered prompt (which is how ``prefix`` is continued)."""

    @abstractmethod
    def render(self, messages: Messages) -> str: ...

    def stream_chat(
        self, messages: Messages, *, prefix: str = "", max_tokens: int | None = None
    ) -> Iterator[str]:
        prompt = self.render(messages) + prefix
        llm: Any = self.llm
        old = llm.max_new_tokens
        # LlamaIndex's LlamaCPP copies max_new_tokens into generate_kwargs once, at load: the
        # cap must go there too or a request's max_tokens is ignored.
        kwargs: dict[str, Any] = getattr(llm, "generate_kwargs", None) or {}
        old_kw = kwargs.get("max_tokens")
        if max_tokens:
            llm.max_new_tokens = max_tokens
            if old_kw is not None:
                kwargs["max_tokens"] = max_tokens
        text, reason = "", None
        try:
            for r in llm.stream_complete(prompt, formatted=True):
                if r.delta:
                    text += r.delta
                    yield r.delta
                reason = finish_of(r.raw) or reason  # llama.cpp says; transformers does not
        finally:
            llm.max_new_tokens = old
            if old_kw is not None:
                kwargs["max_tokens"] = old_kw
        if reason is None and finish_reasons.get() is not None:  # count what was generated
            reason = "length" if self.count_tokens(text) >= (max_tokens or old) else "stop"
        record_finish(reason)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpus or 1)


def is_gguf_adapter(adapter: str | Path | None) -> bool:
    """A LoRA adapter in GGUF form (``medllm finetune export-gguf``), which llama.cpp applies."""
    return adapter is not None and Path(adapter).suffix == ".gguf"
