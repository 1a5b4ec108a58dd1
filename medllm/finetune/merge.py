"""Merge a LoRA adapter into its base model: a full-precision safetensors model directory that
the registry loads like any other local model (``--model DIR``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from medllm.errors import MedllmError, ModelNotAvailableError
from medllm.fsutil import refuse_overwrite, staged_dir

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)


def base_model_of(adapter: Path) -> str:
    """The base model an adapter was trained on (its config.yaml, else adapter_config.json)."""
    if not adapter.exists():
        raise ModelNotAvailableError(f"adapter directory not found: {adapter}")
    cfg = adapter / "config.yaml"
    if cfg.is_file():
        from medllm.finetune.config import load_config

        return load_config(cfg).model.name
    acfg = adapter / "adapter_config.json"
    if not acfg.is_file():
        raise ModelNotAvailableError(
            f"{adapter} is not a LoRA adapter directory (no adapter_config.json)"
        )
    base = str(json.loads(acfg.read_text())["base_model_name_or_path"])
    from medllm.models import KNOWN_MODELS

    # medllm records a packaged model by its hub id (portable): the packaged copy runs it here
    known = [name for name, spec in KNOWN_MODELS.items() if spec.hub_id == base]
    return known[0] if known else base


def merge(adapter: Path, output: Path, *, settings: Settings, overwrite: bool = False) -> Path:
    adapter, output = adapter.expanduser().resolve(), output.expanduser().resolve()
    refuse_overwrite(output, overwrite)
    from medllm.models import load_hf_model
    from medllm.scoring.heads import is_head_dir

    if is_head_dir(adapter):
        raise MedllmError(
            f"{adapter} is a linear label head: it changes no weights, so there is nothing to "
            "merge; use it directly with --adapter"
        )
    base = base_model_of(adapter)
    model, tok, _ = load_hf_model(
        base, models_dir=settings.paths.models_dir, adapter=adapter, device="cpu"
    )
    merged = model.merge_and_unload()
    try:
        with staged_dir(output) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "medllm-merge.json").write_text(
                json.dumps({"base": base, "adapter": str(adapter)}, indent=2)
            )
    except OSError as e:
        raise MedllmError(f"could not write the merged model to {output}: {e}") from None
    logger.info("merged %s + %s -> %s", base, adapter, output)
    return output
