"""The OpenAI-compatible server backend: vLLM, Ollama, llama.cpp's server, TGI — anything that
speaks ``/v1/chat/completions``.

Chat and streaming go through LlamaIndex's ``OpenAILike``. Label options are scored from the
server's log-probabilities of the first answer token (``logprobs=true``, ``top_logprobs=N``,
one token generated): a returned token counts for an option when its text (without
surrounding whitespace) is the option, or else a prefix of exactly one option. An option
missing from the top N gets a stated floor — the lowest log-probability the server returned,
an upper bound on its own — and the answer's warnings and the run's items say so. A server
that returns no log-probabilities gets one error naming the server and the fix.

The API key is read from the environment variable named by ``api.key_env`` (default
``MEDLLM_API_KEY``) at load time; it is never stored in settings, run configs, logs or errors.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medllm.errors import MedllmError
from medllm.models.base import (
    Backend,
    Capabilities,
    Messages,
    OptionProbs,
    finish_of,
    record_finish,
)

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)


class ServerError(MedllmError):
    """A model server could not be used: the message names the server and the fix."""


def _first_line(text: object, limit: int = 200) -> str:
    return str(text).strip().splitlines()[0][:limit] if str(text).strip() else ""


# How servers say a prompt is longer than the model's context: vLLM and llama-cpp-python
# ("This model's maximum context length is N tokens. However, you requested M tokens"), newer
# vLLM ("... longer than the maximum model length"), llama.cpp's C++ server ("the request
# exceeds the available context size").
_CONTEXT_FULL = re.compile(
    r"maximum context length|maximum model length|context (window|size|length)", re.I
)


def _server_message(e: Any) -> str:
    """The message a server put in its error body (OpenAI's ``{"error": {"message"}}``,
    FastAPI's ``{"detail"}``), else the client's own text."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else inner
        msg = msg or body.get("detail") or body.get("message")
        if msg:
            return str(msg)
    return str(getattr(e, "message", e))


class OpenAICompatBackend(Backend):
    name = "openai-compatible"
    continues_prefix = False
    default_capabilities = Capabilities(
        logprobs=True, hidden_states=False, lora=False, tool_calling=False
    )

    def __init__(self, settings: Settings):
        try:
            import openai
        except ImportError:
            raise ServerError(
                "the openai-compatible backend needs the openai client: "
                "pip install 'medllm[server]'"
            ) from None
        api = settings.api
        assert api.base is not None  # resolve_backend checked it
        self.base = api.base.rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise ServerError(
                f"--api-base {api.base!r} is not an http(s) URL; write it in full, e.g. "
                f"http://{self.base.split('://')[-1]}{'' if '/v1' in self.base else '/v1'}"
            )
        self.timeout = api.timeout
        self.key_env = api.key_env
        self.top_n = api.top_logprobs
        key = os.environ.get(api.key_env) or "none"  # servers without auth ignore it
        self.client = openai.OpenAI(
            base_url=self.base, api_key=key, timeout=api.timeout, max_retries=api.retries
        )
        self.model = self._check_model(api.model)
        self.capabilities = Capabilities(
            logprobs=True, hidden_states=False, lora=False, tool_calling=api.tool_calling
        )
        self.scoring = (
            f"first-token top-{self.top_n} log-probabilities from the server, renormalised over "
            "the options; an option missing from the top N gets the lowest returned "
            "log-probability (a stated floor, flagged per item)"
        )
        g = settings.generation
        try:
            from llama_index.llms.openai_like import OpenAILike
        except ImportError:
            raise ServerError(
                "the openai-compatible backend needs llama-index-llms-openai-like: "
                "pip install 'medllm[server]'"
            ) from None
        self.llm = OpenAILike(
            model=self.model,
            api_base=self.base,
            api_key=key,
            is_chat_model=True,
            is_function_calling_model=api.tool_calling,
            context_window=g.context_window,
            max_tokens=g.max_new_tokens,
            temperature=g.temperature,
            timeout=api.timeout,
            max_retries=api.retries,
            additional_kwargs={"seed": g.seed} if g.temperature > 0 else {},
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "api_base": self.base, "top_logprobs": self.top_n}

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """openai/httpx exceptions become one :class:`ServerError` naming the server."""
        import openai

        where = f"the OpenAI-compatible server at {self.base}"
        try:
            yield
        except openai.APITimeoutError:
            raise ServerError(
                f"{where} did not answer within {self.timeout:g} s while {doing}. Check the "
                "server, or raise the limit (api.timeout, MEDLLM_API__TIMEOUT)"
            ) from None
        except openai.APIConnectionError as e:
            cause = _first_line(getattr(e, "__cause__", None) or e)
            raise ServerError(
                f"cannot reach {where} while {doing} ({cause}). Is the server running, and is "
                "--api-base its URL (e.g. http://127.0.0.1:8000/v1)?"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise ServerError(
                f"{where} refused the request ({e.status_code} "
                f"{'Unauthorized' if e.status_code == 401 else 'Forbidden'}) while {doing}. "
                f"Put the server's API key in the environment variable {self.key_env}"
            ) from None
        except openai.NotFoundError as e:
            raise ServerError(
                f"{where} answered 404 Not Found while {doing} ({_first_line(e.message)}). "
                "Check --api-base (it ends in /v1 for most servers) and --api-model"
            ) from None
        except openai.APIStatusError as e:
            said = _server_message(e)
            if e.status_code == 400 and _CONTEXT_FULL.search(said):
                raise ServerError(
                    f"the prompt does not fit the context window of the model served at "
                    f"{self.base} ({_first_line(said, 300)}) while {doing}. Start the server "
                    "with a larger context (llama.cpp server --n_ctx, vLLM --max-model-len, "
                    "Ollama num_ctx), or send fewer abstracts (-k, retrieval.top_k)"
                ) from None
            raise ServerError(
                f"{where} answered {e.status_code} while {doing}: {_first_line(said)}"
            ) from None

    def _check_model(self, wanted: str | None) -> str:
        """``wanted`` if the server serves it; with None, the one model the server lists."""
        import openai

        try:
            with self._errors("listing its models (GET /models)"):
                served = [m.id for m in self.client.models.list()]
        except ServerError as e:
            if wanted and "404" in str(e):  # some servers have no /models: trust the name
                return wanted
            raise
        except openai.OpenAIError as e:  # e.g. a body that is not a model list
            raise ServerError(
                f"{self.base} did not answer GET /models like an OpenAI-compatible server "
                f"({_first_line(e)}). Check --api-base"
            ) from None
        if wanted is None:
            if len(served) == 1:
                return served[0]
            raise ServerError(
                f"the server at {self.base} serves {len(served)} models "
                f"({', '.join(served) or 'none'}): choose one with --api-model NAME"
            )
        if wanted not in served:
            raise ServerError(
                f"the server at {self.base} does not serve a model named {wanted!r}; it serves: "
                f"{', '.join(served) or 'none'}. Pass one of them with --api-model"
            )
        return wanted

    # ------------------------------------------------------------------ chat

    def stream_chat(
        self, messages: Messages, *, prefix: str = "", max_tokens: int | None = None
    ) -> Iterator[str]:
        from llama_index.core.llms import ChatMessage

        msgs = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
        kw = {"max_tokens": max_tokens} if max_tokens else {}
        # A server cannot continue our prefix inside its own chat template: the reply is asked
        # for as is, and a repetition of the prefix at its start is dropped.
        head = re.compile(r"^\s*" + re.escape(prefix.strip().rstrip(".")) + r"\b[.,:;!]?\s*", re.I)
        pending = "" if prefix.strip() else None
        reason = None
        with self._errors("generating"):
            for r in self.llm.stream_chat(msgs, **kw):
                reason = finish_of(r.raw) or reason
                delta = r.delta or ""
                if pending is None:
                    if delta:
                        yield delta
                    continue
                pending += delta
                if len(pending.strip()) > len(prefix.strip()):
                    yield head.sub("", pending, count=1)
                    pending = None
            if pending:
                yield head.sub("", pending, count=1)
        record_finish(reason)

    # ------------------------------------------------------------------ scoring

    def _first_token_logprobs(self, messages: Messages) -> list[tuple[str, float]]:
        with self._errors("scoring label options (logprobs of one token)"):
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=list(messages),  # type: ignore[arg-type]
                max_tokens=1,
                temperature=0.0,
                logprobs=True,
                top_logprobs=self.top_n,
            )
        choice = resp.choices[0] if resp.choices else None
        content = choice.logprobs.content if choice and choice.logprobs else None
        if not content or not content[0].top_logprobs:
            raise ServerError(
                f"the server at {self.base} returned no log-probabilities for {self.model!r}, "
                "which label scoring needs. Fix: use a server that returns logprobs/top_logprobs "
                "on /v1/chat/completions (vLLM, llama.cpp's server, a recent Ollama), or run "
                "the model in-process with --backend llama-cpp (GGUF) or --backend transformers"
            )
        return [(t.token, float(t.logprob)) for t in content[0].top_logprobs]

    def score_batch(
        self,
        batch: Sequence[Messages],
        options: Sequence[str],
        *,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[OptionProbs]:
        def one(msgs: Messages) -> OptionProbs:
            return options_from_top(self._first_token_logprobs(msgs), options, self.top_n)

        return self._score_each(batch, options, one, progress=progress)


def options_from_top(
    top: Sequence[tuple[str, float]], options: Sequence[str], n: int
) -> OptionProbs:
    """Option probabilities from a server's top first-token log-probabilities.

    A token counts for the option it equals (whitespace stripped), else for the one option it
    is a prefix of; an option given by several tokens (" yes", "yes") takes the most likely.
    Options no token counts for get the lowest returned log-probability (a floor, said in the
    result's ``warnings``)."""
    best: dict[str, float] = {}
    for token, lp in top:
        t = token.strip()
        if not t:
            continue
        hits = [o for o in options if o == t] or [o for o in options if o.startswith(t)]
        if len(hits) == 1:
            o = hits[0]
            best[o] = max(best.get(o, -math.inf), lp)
    floor = min(lp for _, lp in top)
    missing = [o for o in options if o not in best]
    warnings = []
    if missing:
        warnings.append(
            f"label option(s) {', '.join(missing)} not among the server's top-{n} first tokens: "
            f"given the floor log-probability {floor:.2f} (the lowest returned)"
        )
    vals = [best.get(o, floor) for o in options]
    m = max(vals)
    exps = [math.exp(v - m) for v in vals]
    z = sum(exps)
    return OptionProbs({o: e / z for o, e in zip(options, exps, strict=True)}, warnings)
