"""The llama.cpp backend (``settings.models.backend = "llama-cpp"``).

Runs a GGUF file through llama-cpp-python, wrapped in LlamaIndex's ``LlamaCPP`` LLM. Known
packaged models use the package's own GGUF (no dequantization); any other ``.gguf`` path works
too. Prompts are formatted with the model's chat template (the registry's override, else the
template stored in the GGUF, else ChatML), rendered with jinja2 exactly like transformers does.

Label options are scored from the same model's logits (:class:`LlamaCppBackend`): the prompt is
evaluated once and the options' first-token log-probabilities are read from its last position
(or, when options share a first token, their continuations are evaluated on the prompt's KV
cache) — the method of :mod:`medllm.scoring.likelihood`, without a transformers copy of the
model.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import ModelNotAvailableError
from medllm.models.base import (
    Capabilities,
    LocalBackend,
    Messages,
    OptionProbs,
    is_gguf_adapter,
)

if TYPE_CHECKING:
    from llama_index.core.llms import LLM

    from medllm.config import Settings

logger = logging.getLogger(__name__)

# End-of-turn markers of the chat formats we know; llama.cpp also stops at the GGUF's EOS.
STOP = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "</s>"]


def gguf_path(name_or_path: str, settings: Settings) -> Path:
    """The GGUF file for a known packaged model or an explicit ``.gguf`` path."""
    from medllm.models.registry import KNOWN_MODELS

    spec = KNOWN_MODELS.get(name_or_path)
    if spec is not None:
        if spec.kind != "llm":
            raise ModelNotAvailableError(f"{name_or_path!r} is an embedding model, not an LLM")
        return spec.locate(settings.paths.models_dir)
    p = Path(name_or_path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    raise ModelNotAvailableError(
        f"the llama-cpp backend needs a GGUF model: {name_or_path!r} is neither a known packaged "
        f"model ({', '.join(KNOWN_MODELS)}) nor a .gguf file (or a directory with exactly one). "
        "Use backend 'transformers' for hub ids and safetensors directories."
    )


def _template(name_or_path: str, metadata: dict[str, str]) -> str:
    from medllm.models.registry import KNOWN_MODELS, chat_template

    return chat_template(KNOWN_MODELS.get(name_or_path), metadata.get("tokenizer.chat_template"))


def chat_formatter(template: str, bos: str = "", eos: str = "") -> Any:
    """A function rendering a list of ``{"role", "content"}`` dicts with a jinja template."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    tmpl = env.from_string(template)

    def render(messages: Sequence[dict[str, str]]) -> str:
        return tmpl.render(
            messages=list(messages), add_generation_prompt=True, bos_token=bos, eos_token=eos
        )

    return render


_PATCH_LOCK = threading.Lock()


@contextmanager
def _no_extra_buffers() -> Iterator[None]:
    """Load with ``use_extra_bufts = False`` (no weight repacking into AMX/extra buffers).

    With the repacked buffers, llama-cpp-python 0.3.x segfaults in the first decode on CPUs that
    advertise AMX inside VMs (the Xeon VM this was written on); without them it runs. Q4_1 has no
    repacked kernel, so for the packaged model this costs nothing (bench/llamacpp_threads.py).
    llama-cpp-python exposes no argument for it, so the default model parameters are patched
    while the model loads.
    """
    import llama_cpp
    import llama_cpp.llama as lmod

    orig = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = orig()
        p.use_extra_bufts = False
        return p

    with _PATCH_LOCK:
        lmod.llama_cpp.llama_model_default_params = params  # type: ignore[attr-defined]
        try:
            yield
        finally:
            lmod.llama_cpp.llama_model_default_params = orig  # type: ignore[attr-defined]


def load_llamacpp_llm(name_or_path: str, *, settings: Settings) -> LLM:
    """A LlamaIndex ``LlamaCPP`` LLM for a known packaged model or a GGUF path."""
    return LlamaCppBackend(name_or_path, settings=settings).llm


def log_softmax(logits: Any) -> Any:
    """Log-probabilities (float64) from llama.cpp logits: one row, or one row per position."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def _threads() -> tuple[int, int]:
    """``(n_threads, n_threads_batch)``: generation and prompt evaluation threads.

    A prompt (label scoring is only that) is evaluated on every CPU we may run on. Generation
    decodes one token at a time — tiny matrix-vector products and ~1,000 thread barriers per
    token — and runs on half of them (llama-cpp-python's own default, ``cpu_count // 2``). On
    this 2-core machine one generation thread gave 85-120 tokens/s against 21-76 for two
    (bench/llamacpp_threads.py); both counts are always passed, so that llama-cpp-python's
    ``n_threads_batch = cpu_count()`` never exceeds the CPUs this process may use.
    """
    from medllm.models.base import usable_cpus

    cpus = usable_cpus()
    return max(1, cpus // 2), cpus


class LlamaCppBackend(LocalBackend):
    """One in-process llama.cpp model: it generates and scores (no second copy)."""

    name = "llama-cpp"
    default_capabilities = Capabilities(
        logprobs=True, hidden_states=False, lora=True, tool_calling=False
    )
    scoring = "likelihood from the GGUF's logits (next-token log-probabilities, renormalised)"

    def __init__(self, name_or_path: str, *, settings: Settings):
        try:
            from llama_cpp import Llama  # noqa: F401
            from llama_index.llms.llama_cpp import LlamaCPP
        except ImportError:
            raise ModelNotAvailableError(
                "the llama-cpp backend needs llama-cpp-python and llama-index-llms-llama-cpp: "
                "pip install llama-cpp-python llama-index-llms-llama-cpp"
            ) from None

        from medllm.models.gguf_float import runtime_path

        path = gguf_path(name_or_path, settings)
        run_path, weights = runtime_path(
            path, settings.models.gguf_weights, Path(settings.paths.models_dir)
        )
        g = settings.generation
        threads, threads_batch = _threads()
        gen: dict[str, Any] = {"stop": STOP, "seed": g.seed}
        if g.temperature > 0:
            gen.update(top_p=g.top_p)
        else:
            gen.update(top_k=1)
        model_kwargs: dict[str, Any] = {
            "n_threads": threads,
            "n_threads_batch": threads_batch,
            "n_gpu_layers": 0,
            "seed": g.seed,
        }
        adapter = settings.models.adapter
        if is_gguf_adapter(adapter):
            model_kwargs["lora_path"] = str(adapter)  # a GGUF LoRA adapter
        try:
            with _no_extra_buffers():
                llm = LlamaCPP(
                    model_path=str(run_path),
                    temperature=g.temperature,
                    max_new_tokens=g.max_new_tokens,
                    context_window=g.context_window,
                    generate_kwargs=gen,
                    model_kwargs=model_kwargs,
                    verbose=False,
                )
        except ValueError as e:
            raise ModelNotAvailableError(f"llama.cpp cannot load {path}: {e}") from None
        model = llm._model
        # Free the model before interpreter teardown: llama-cpp-python's __del__ otherwise
        # prints a TypeError at exit (its C bindings are already gone by then).
        atexit.register(model.close)
        meta = dict(getattr(model, "metadata", {}) or {})
        bos = eos = ""
        try:
            bos = model.detokenize([model.token_bos()]).decode("utf-8", "ignore")
            eos = model.detokenize([model.token_eos()]).decode("utf-8", "ignore")
        except Exception:  # some vocabularies have no printable BOS/EOS
            pass
        self._render = chat_formatter(_template(name_or_path, meta), bos=bos, eos=eos)
        render = self._render
        llm.messages_to_prompt = lambda msgs: render(
            [{"role": m.role.value, "content": m.content or ""} for m in msgs]
        )
        llm.completion_to_prompt = lambda text: render([{"role": "user", "content": text}])
        self.llm = llm
        self.llama = model
        self.model = name_or_path
        self.path = path  # the model's identity (calibration, the gate's sharing): the file named
        self.run_path = run_path  # what llama.cpp runs: that file or its float copy
        self.weights = weights  # the copy's type ("bf16" | "f16" | "f32"), None for the file
        self.capabilities = self.default_capabilities
        logger.debug(
            "llama.cpp: %s, %d generation / %d prompt threads, OMP_WAIT_POLICY=%s",
            run_path.name,
            threads,
            threads_batch,
            os.environ.get("OMP_WAIT_POLICY"),
        )

    def render(self, messages: Messages) -> str:
        return str(self._render(list(messages)))

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "gguf": str(self.path)}
        if self.weights:
            out["weights"] = f"{self.weights} copy ({self.run_path})"
        return out

    def close(self) -> None:
        self.llama.close()

    # ------------------------------------------------------------------ scoring

    def _tokens(self, text: str, *, prompt: bool) -> list[int]:
        """A prompt is tokenized as generation does (the vocabulary's BOS rule, special tokens
        parsed); an option as plain text."""
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=prompt, special=prompt))

    def _logprobs_after(self, ids: list[int], keep: int = 0) -> Any:
        """Evaluate ``ids`` and return the log-softmax of the next-token logits. The KV cache of
        the first ``keep`` tokens is reused: only for an option's continuation of a prompt just
        evaluated — a prompt is always evaluated whole, so that its scores never depend on what
        was scored before (llama.cpp's results vary slightly with how a prompt is batched)."""
        import llama_cpp
        import numpy as np

        lm = self.llama
        if len(ids) >= lm.n_ctx():
            from medllm.errors import DataError

            raise DataError(
                f"the prompt is {len(ids)} tokens; the llama.cpp context holds {lm.n_ctx()} "
                "(raise generation.context_window)"
            )
        lm.n_tokens = keep
        lm.eval(ids[keep:])
        ptr = llama_cpp.llama_get_logits_ith(lm.ctx, -1)
        return log_softmax(np.ctypeslib.as_array(ptr, shape=(lm.n_vocab(),)))

    def _option_ids(self, prompt: str, option: str) -> list[int]:
        lead = " " if prompt and not prompt[-1].isspace() else ""  # as scoring.likelihood
        return self._tokens(lead + option, prompt=False)

    def _score(self, prompt: str, options: Sequence[str]) -> list[float]:
        ids = self._tokens(prompt, prompt=True)
        opt_ids = [self._option_ids(prompt, o) for o in options]
        if any(not o for o in opt_ids):
            raise ValueError(f"an option tokenizes to nothing: {list(options)}")
        first = self._logprobs_after(ids)
        firsts = [o[0] for o in opt_ids]
        if len(set(firsts)) == len(firsts):  # one forward pass is enough
            return [float(first[t]) for t in firsts]
        rows = []
        for o in opt_ids:  # full continuation log-likelihood of each option
            total, lp = 0.0, first
            for j, t in enumerate(o):
                total += float(lp[t])
                if j < len(o) - 1:
                    lp = self._logprobs_after(ids + o[: j + 1], keep=len(ids) + j)
            rows.append(total)
        return rows

    def score_batch(
        self,
        batch: Sequence[Messages],
        options: Sequence[str],
        *,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[OptionProbs]:
        from medllm.scoring.likelihood import normalise

        def one(msgs: Messages) -> OptionProbs:
            return OptionProbs(normalise(self._score(self.render(msgs), options), options))

        return self._score_each(batch, options, one, progress=progress)
