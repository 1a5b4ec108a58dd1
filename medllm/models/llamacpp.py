"""The llama.cpp generation backend (``settings.models.backend = "llama-cpp"``).

Runs a GGUF file through llama-cpp-python, wrapped in LlamaIndex's ``LlamaCPP`` LLM. Known
packaged models use the package's own GGUF (no dequantization); any other ``.gguf`` path works
too. Prompts are formatted with the model's chat template (the registry's override, else the
template stored in the GGUF, else ChatML), rendered with jinja2 exactly like transformers does.

llama.cpp cannot score label options through :mod:`medllm.scoring` (that needs transformers
logits), so the agents keep a transformers model for scoring and may use this backend for the
free-text answer only.
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


def is_gguf_model(name_or_path: str, settings: Settings) -> bool:
    """Whether ``name_or_path`` can run on llama.cpp without conversion."""
    try:
        gguf_path(name_or_path, settings)
    except ModelNotAvailableError:
        return False
    return True


def generation_backend(settings: Settings, name: str | None = None) -> str:
    """The backend that *generates* answers: ``transformers`` or ``llama-cpp``.

    Explicit settings are honoured. ``auto`` (the default) picks llama.cpp for GGUF-packaged
    models on CPU when no LoRA adapter or quantization is requested — it is several times
    faster than transformers there (bench/RESULTS.md) — and transformers otherwise. Label
    scoring always uses transformers. (A linear label head changes no weight: generation may
    stay on llama.cpp.)
    """
    from medllm.scoring.heads import is_head_dir

    m = settings.models
    if m.backend != "auto":
        return m.backend
    lora = m.adapter is not None and not is_head_dir(m.adapter)
    if lora or m.quantization is not None or m.device not in {"auto", "cpu"}:
        return "transformers"
    import importlib.util

    from medllm.models.registry import KNOWN_MODELS

    if (name or m.llm) not in KNOWN_MODELS or importlib.util.find_spec("llama_cpp") is None:
        return "transformers"
    if m.device == "auto":
        import torch

        if torch.cuda.is_available():
            return "transformers"
    return "llama-cpp"


def _template(name_or_path: str, metadata: dict[str, str]) -> str:
    from medllm.models.registry import CHATML_TEMPLATE, KNOWN_MODELS

    spec = KNOWN_MODELS.get(name_or_path)
    if spec is not None and spec.chat_template:
        return spec.chat_template
    return metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE


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
    advertise AMX inside VMs (this machine); without them it runs. llama-cpp-python exposes no
    argument for it, so the default model parameters are patched while the model loads.
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
    try:
        from llama_cpp import Llama  # noqa: F401
        from llama_index.llms.llama_cpp import LlamaCPP
    except ImportError:
        raise ModelNotAvailableError(
            "the llama-cpp backend needs llama-cpp-python and llama-index-llms-llama-cpp: "
            "pip install llama-cpp-python llama-index-llms-llama-cpp"
        ) from None

    path = gguf_path(name_or_path, settings)
    g = settings.generation
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    gen: dict[str, Any] = {"stop": STOP, "seed": g.seed}
    if g.temperature > 0:
        gen.update(top_p=g.top_p)
    else:
        gen.update(top_k=1)
    try:
        with _no_extra_buffers():
            llm = LlamaCPP(
                model_path=str(path),
                temperature=g.temperature,
                max_new_tokens=g.max_new_tokens,
                context_window=g.context_window,
                generate_kwargs=gen,
                model_kwargs={"n_threads": threads, "n_gpu_layers": 0, "seed": g.seed},
                verbose=False,
            )
    except ValueError as e:
        raise ModelNotAvailableError(f"llama.cpp cannot load {path}: {e}") from None
    model = llm._model
    # Free the model before interpreter teardown: llama-cpp-python's __del__ otherwise prints
    # a TypeError at exit (its C bindings are already gone by then).
    atexit.register(model.close)
    meta = dict(getattr(model, "metadata", {}) or {})
    tok = model.tokenizer_ if hasattr(model, "tokenizer_") else None
    bos = eos = ""
    if tok is not None:
        try:
            bos = model.detokenize([model.token_bos()]).decode("utf-8", "ignore")
            eos = model.detokenize([model.token_eos()]).decode("utf-8", "ignore")
        except Exception:  # some vocabularies have no printable BOS/EOS
            pass
    render = chat_formatter(_template(name_or_path, meta), bos=bos, eos=eos)
    llm.messages_to_prompt = lambda msgs: render(
        [{"role": m.role.value, "content": m.content or ""} for m in msgs]
    )
    llm.completion_to_prompt = lambda text: render([{"role": "user", "content": text}])
    logger.debug("llama.cpp: %s with %d threads", path.name, threads)
    return llm
