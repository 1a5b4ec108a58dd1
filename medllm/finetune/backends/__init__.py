"""Training backends. ``unsloth`` is imported only when chosen (it raises without a GPU and
must be imported before transformers/peft/trl); ``hf`` is PEFT + bitsandbytes and runs
everywhere, CPU included.

Each backend module exposes ``load(cfg, settings) -> (peft_model, tokenizer)``; training
itself (TRL ``SFTTrainer``) is shared in :mod:`medllm.finetune.train`.
"""

from __future__ import annotations

import importlib.util

from medllm.errors import MedllmError


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def choose(backend: str) -> str:
    """'auto' -> 'unsloth' with CUDA and unsloth installed, else 'peft'."""
    if backend == "auto":
        has_unsloth = importlib.util.find_spec("unsloth") is not None
        return "unsloth" if has_unsloth and cuda_available() else "peft"
    if backend == "unsloth":
        if not cuda_available():
            raise MedllmError(
                "the unsloth backend needs a CUDA GPU and none is visible; use --backend peft "
                "(PEFT + TRL + bitsandbytes, runs on CPU) or --backend auto"
            )
        if importlib.util.find_spec("unsloth") is None:
            raise MedllmError(
                "the unsloth backend needs the unsloth package: pip install 'medllm[gpu]' "
                "(or use --backend peft)"
            )
    elif backend != "peft":
        raise MedllmError(f"unknown backend {backend!r}; choose auto, unsloth or peft")
    return backend
