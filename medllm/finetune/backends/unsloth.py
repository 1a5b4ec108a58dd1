"""Unsloth backend (CUDA only): ``FastLanguageModel`` 4-bit base + LoRA.

Imported only when chosen: ``import unsloth`` raises without a GPU and patches
transformers/peft/trl, so it must come before them (``medllm.finetune.train`` imports this
module before TRL). Training then runs through the same TRL ``SFTTrainer`` as the PEFT
backend, on the same tokenised examples (loss on response tokens only, checked).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from medllm.errors import MedllmError

if TYPE_CHECKING:
    from medllm.config import Settings
    from medllm.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)


def _require() -> None:
    import torch

    if not torch.cuda.is_available():
        raise MedllmError("the unsloth backend needs a CUDA GPU; use --backend peft on CPU")
    if importlib.util.find_spec("unsloth") is None:
        raise MedllmError("the unsloth backend needs: pip install 'medllm[gpu]'")


def early_import() -> None:
    """Import unsloth now, before anything imports transformers/peft/trl."""
    _require()
    import unsloth  # noqa: F401  (patches transformers/peft/trl; must be first)


def load(cfg: FinetuneConfig, settings: Settings) -> tuple[Any, Any]:
    early_import()
    from unsloth import FastLanguageModel

    from medllm.finetune.backends.hf import top_layers
    from medllm.models.registry import chat_template, resolve

    resolved = resolve(cfg.model.name, settings.paths.models_dir)
    model, tok = FastLanguageModel.from_pretrained(
        model_name=resolved.path,
        max_seq_length=cfg.task.max_seq_length,
        dtype=None,  # bf16 where supported, else fp16
        load_in_4bit=cfg.model.quantization == "nf4",
    )
    own = getattr(tok, "chat_template", None)
    tok.chat_template = chat_template(resolved.known, own, cfg.model.chat_template)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    lc = cfg.lora
    layers = top_layers(cfg, model)
    extra = {"layers_to_transform": layers} if layers is not None else {}
    model = FastLanguageModel.get_peft_model(
        model,
        r=lc.r,
        target_modules=lc.target_modules,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False,
        random_state=cfg.train.seed,
        use_rslora=lc.use_rslora,
        loftq_config=None,
        **extra,
    )
    return model, tok
