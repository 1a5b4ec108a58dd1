"""Models: the registry of known/hub/local models and their conversion
(:mod:`medllm.models.registry`), the Gemma GGUF tokenizer, the ONNX embedding and the llama.cpp
backend. The registry's public names are re-exported here."""

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
    load_llm,
    model_table,
    resolve,
    verify_converted,
)

__all__ = [
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
