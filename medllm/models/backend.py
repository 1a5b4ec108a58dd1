"""One backend interface for every LLM medllm talks to.

A :class:`~medllm.models.base.Backend` chats, streams, and scores a closed set of options
(``score_options(messages, options) -> {option: probability}``), and declares what it can do
(:class:`~medllm.models.base.Capabilities`). Three implementations:

* ``transformers`` (:mod:`medllm.models.transformers`): in-process, CPU/CUDA, nf4, LoRA
  adapters and linear label heads;
* ``llama-cpp`` (:mod:`medllm.models.llamacpp`): in-process, any GGUF file; generation and
  label scoring from the GGUF's own logits (one copy of the model);
* ``openai-compatible`` (:mod:`medllm.models.openai_compat`): a model server (vLLM, Ollama,
  llama.cpp's server, TGI); label scoring from the first answer token's ``top_logprobs``.

:func:`resolve_backend` is the one place that decides which backend a model runs on;
:func:`load_backend` loads it. ``generate``, ``ask``/``chat``/``serve`` (the engine) and every
``eval`` command go through them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import ConfigError, ModelNotAvailableError
from medllm.models.base import (
    BACKENDS,
    Backend,
    Capabilities,
    LocalBackend,
    Messages,
    OptionProbs,
    is_gguf_adapter,
)

if TYPE_CHECKING:
    from llama_index.core.llms import LLM

    from medllm.config import Settings

__all__ = [
    "BACKENDS",
    "Backend",
    "Capabilities",
    "LocalBackend",
    "Messages",
    "OptionProbs",
    "backend_table",
    "load_backend",
    "load_llm",
    "model_identity",
    "resolve_backend",
]
# --------------------------------------------------------------------------- resolution


def _is_gguf(name: str, settings: Settings) -> bool:
    from medllm.models.registry import KNOWN_MODELS

    spec = KNOWN_MODELS.get(name)
    if spec is not None:
        return spec.kind == "llm"
    p = Path(name).expanduser()
    return (p.is_file() and p.suffix == ".gguf") or (
        p.is_dir() and len(list(p.glob("*.gguf"))) == 1
    )


def uses_server(settings: Settings) -> bool:
    """Whether the server backend answers: ``models.backend`` openai-compatible, or auto with
    ``api.base`` set (decided without importing anything; :func:`resolve_backend` starts so)."""
    m = settings.models
    return m.backend == "openai-compatible" or (m.backend == "auto" and bool(settings.api.base))


def resolve_backend(settings: Settings, name: str | None = None) -> str:
    """The backend that runs ``name`` (default ``settings.models.llm``): the one decision every
    command uses.

    An explicit ``models.backend`` is honoured. ``auto``: ``openai-compatible`` when
    ``api.base`` is set; else ``llama-cpp`` for GGUF models (the packaged ones, a ``.gguf``
    file) on CPU without adapter or quantization, or with a GGUF LoRA adapter (``.gguf``) —
    several times faster than transformers there and one copy of the model (bench/RESULTS.md);
    else ``transformers`` (hub ids, safetensors directories, CUDA, nf4, PEFT LoRA adapters and
    linear heads)."""
    m = settings.models
    if uses_server(settings):
        if not settings.api.base:
            raise ConfigError(
                "the openai-compatible backend needs the server's URL: --api-base URL "
                "(or api.base / MEDLLM_API__BASE), e.g. http://127.0.0.1:8000/v1"
            )
        return "openai-compatible"
    if m.backend != "auto":
        return m.backend
    if (
        (m.adapter is not None and not is_gguf_adapter(m.adapter))
        or m.quantization is not None
        or m.device not in {"auto", "cpu"}
    ):
        return "transformers"
    if importlib.util.find_spec("llama_cpp") is None or not _is_gguf(name or m.llm, settings):
        return "transformers"
    if m.device == "auto":
        from medllm.models.registry import _gpu_possible

        if _gpu_possible():  # else known without importing torch (~1.5 s cold)
            import torch

            if torch.cuda.is_available():
                return "transformers"
    return "llama-cpp"


def check_adapter_fits(kind: str, adapter: Path | None) -> None:
    """A clear error when ``adapter`` needs a capability backend ``kind`` lacks."""
    if adapter is None:
        return
    if kind == "transformers":
        if is_gguf_adapter(adapter):
            raise ModelNotAvailableError(
                f"{adapter} is a GGUF LoRA, which llama.cpp applies: use --backend llama-cpp with "
                "a GGUF model, or pass the PEFT adapter directory to the transformers backend"
            )
        return
    from medllm.scoring.heads import is_head_dir

    if is_head_dir(adapter):
        raise ModelNotAvailableError(
            f"{adapter} is a linear label head, which reads hidden states; the {kind} backend "
            "does not expose them. Use --backend transformers"
        )
    if kind == "llama-cpp" and is_gguf_adapter(adapter):
        return  # a GGUF LoRA: llama.cpp applies it
    if kind == "llama-cpp":
        raise ModelNotAvailableError(
            f"the llama-cpp backend applies LoRA adapters in GGUF form only; {adapter} is not a "
            ".gguf file. Export it with `medllm finetune export-gguf DIR --output FILE.gguf`, "
            "or use --backend transformers"
        )
    raise ModelNotAvailableError(
        f"the {kind} backend cannot apply a local adapter ({adapter}): load it into the server "
        "(e.g. vLLM --enable-lora --lora-modules NAME=DIR) and pass --api-model NAME"
    )


def load_backend(settings: Settings, name: str | None = None) -> Backend:
    """Load the backend :func:`resolve_backend` chooses for ``name`` (default: models.llm)."""
    kind = resolve_backend(settings, name)
    check_adapter_fits(kind, settings.models.adapter)
    if kind == "openai-compatible":
        from medllm.models.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(settings)  # the model: api.model, or the one it serves
    if kind == "llama-cpp":
        from medllm.models.llamacpp import LlamaCppBackend

        return LlamaCppBackend(name or settings.models.llm, settings=settings)
    from medllm.models.transformers import TransformersBackend

    return TransformersBackend(name or settings.models.llm, settings=settings)


def load_llm(
    name_or_path: str | None = None,
    *,
    adapter: str | Path | None = None,
    quantization: str | None = None,
    device: str | None = None,
    settings: Settings | None = None,
    backend: str | None = None,
) -> LLM:
    """A LlamaIndex LLM for a known name, hub id, local path (or a server's model), on the
    backend :func:`resolve_backend` picks (or ``backend``). Greedy unless
    ``settings.generation.temperature`` > 0."""
    from medllm.config import Settings

    s = settings or Settings.load()
    s = s.with_overrides(
        models={
            "llm": name_or_path,
            "adapter": adapter,
            "quantization": quantization,
            "device": device,
            "backend": backend,
        }
    )
    return load_backend(s).llm


def model_identity(settings: Settings) -> dict[str, Any]:
    """Backend, name, path and source of the model an evaluation runs — without loading it
    (and without converting a GGUF the llama-cpp backend reads directly)."""
    kind = resolve_backend(settings)
    name = settings.models.llm
    if kind == "openai-compatible":
        return {
            "backend": kind,
            "name": settings.api.model or name,
            "path": settings.api.base,
            "source": "server",
        }
    from medllm.models.registry import resolve

    if kind == "llama-cpp":
        from medllm.models.llamacpp import gguf_path

        path = gguf_path(name, settings)
        return {"backend": kind, "name": name, "path": str(path), "source": "gguf"}
    resolved = resolve(name, settings.paths.models_dir)
    return {
        "backend": kind,
        "name": name,
        "path": resolved.path,
        "source": resolved.source,
    }


def backend_table() -> list[dict[str, Any]]:
    """The three backends, whether each can run here, and what each supports."""
    from medllm.models.llamacpp import LlamaCppBackend
    from medllm.models.openai_compat import OpenAICompatBackend
    from medllm.models.transformers import TransformersBackend

    rows = []
    for cls, pkgs in (
        (TransformersBackend, ("transformers", "torch")),
        (LlamaCppBackend, ("llama_cpp",)),
        (OpenAICompatBackend, ("openai", "llama_index.llms.openai_like")),
    ):
        missing = [p for p in pkgs if importlib.util.find_spec(p) is None]
        rows.append(
            {
                "backend": cls.name,
                "available": not missing,
                "missing": missing,
                **asdict(cls.default_capabilities),
            }
        )
    return rows
