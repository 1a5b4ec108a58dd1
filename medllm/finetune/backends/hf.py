"""PEFT + bitsandbytes backend: QLoRA (NF4 base) or plain LoRA, on CPU or CUDA."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medllm.config import Settings
    from medllm.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)


def top_layers(cfg: FinetuneConfig, model: Any) -> list[int] | None:
    """Indices of the top ``lora.layers`` layers (None: all)."""
    if cfg.lora.layers is None:
        return None
    n = int(model.config.num_hidden_layers)
    return list(range(max(n - cfg.lora.layers, 0), n))


def lora_config(cfg: FinetuneConfig, model: Any) -> Any:
    from peft import LoraConfig

    lc = cfg.lora
    return LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=lc.target_modules,
        use_rslora=lc.use_rslora,
        layers_to_transform=top_layers(cfg, model),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load(cfg: FinetuneConfig, settings: Settings) -> tuple[Any, Any]:
    from peft import get_peft_model, prepare_model_for_kbit_training

    from medllm.models.registry import chat_template, load_hf_model

    model, tok, _ = load_hf_model(
        cfg.model.name,
        models_dir=settings.paths.models_dir,
        quantization=cfg.model.quantization,
        device=settings.models.device,
        trust_remote_code=settings.models.trust_remote_code,
    )
    # load_hf_model applied the registry's rule; a fine-tuning config's template overrides it.
    tok.chat_template = chat_template(None, tok.chat_template, cfg.model.chat_template)
    if cfg.model.quantization:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing
        )
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    from transformers import set_seed

    set_seed(cfg.train.seed)  # the LoRA matrices are drawn here, before the Trainer seeds
    try:
        model = get_peft_model(model, lora_config(cfg, model))
    except ValueError as e:
        from medllm.errors import ConfigError

        raise ConfigError(f"lora.target_modules does not fit {cfg.model.name}: {e}") from None
    return model, tok
