"""Models: the registry of known/hub/local models and their conversion
(:mod:`medllm.models.registry`), the Gemma GGUF tokenizer, the ONNX embedding, and the
one module per backend behind :mod:`medllm.models.backend`. The registry's and the backend
interface's public names are re-exported here."""

from medllm.models.backend import Backend, load_backend, load_llm, resolve_backend
from medllm.models.registry import (
    CHATML_TEMPLATE,
    GEMMA_CHAT_TEMPLATE,
    KNOWN_MODELS,
    MANIFEST,
    KnownModel,
    ResolvedModel,
    apply_adapter,
    converted_dir,
    ensure_converted,
    load_embedding,
    load_hf_model,
    model_table,
    resolve,
    verify_converted,
)

__all__ = [
    "Backend",
    "load_backend",
    "resolve_backend",
    "CHATML_TEMPLATE",
    "GEMMA_CHAT_TEMPLATE",
    "KNOWN_MODELS",
    "MANIFEST",
    "KnownModel",
    "ResolvedModel",
    "apply_adapter",
    "converted_dir",
    "ensure_converted",
    "load_embedding",
    "load_hf_model",
    "load_llm",
    "model_table",
    "resolve",
    "verify_converted",
]
