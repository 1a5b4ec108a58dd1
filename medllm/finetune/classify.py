"""Encoder baseline (``--task nli --head classification``): a sequence-classification
fine-tune (``AutoModelForSequenceClassification`` + ``Trainer``) of an encoder such as the
packaged all-MiniLM-L6-v2, reporting accuracy and a per-label classification report on the
held-out fold — the tutorial's ELECTRA appendix, offline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import ConfigError, ModelNotAvailableError
from medllm.finetune import data as fdata
from medllm.finetune import tasks
from medllm.finetune.train import FinetuneResult, default_output
from medllm.fsutil import refuse_overwrite, staged_dir

if TYPE_CHECKING:
    from medllm.config import Settings
    from medllm.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-minilm-l6-v2"


def train_classifier(
    cfg: FinetuneConfig,
    settings: Settings,
    output: Path | None = None,
    *,
    overwrite: bool = False,
) -> FinetuneResult:
    cfg.check_head("classification")
    if cfg.task.name != "nli":
        raise ConfigError("--head classification is for --task nli")
    if not cfg.task.data:
        raise ConfigError("--head classification needs --data (an NLI JSONL file)")
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from medllm.models import KNOWN_MODELS, resolve

    name = cfg.model.name
    known = KNOWN_MODELS.get(name)
    if known is not None and known.kind == "llm":
        logger.info(
            "--head classification uses an encoder: %s instead of %s", DEFAULT_ENCODER, name
        )
        name = DEFAULT_ENCODER
    output = (output or default_output(cfg, settings).with_name(f"{name}-nli-cls")).resolve()
    refuse_overwrite(output, overwrite)
    nli = tasks.read_nli(Path(cfg.task.data).expanduser(), split=cfg.task.split, training=True)
    pairs = nli.records
    exs = [tasks.Example(i, [], lab, lab) for i, _, _, lab in pairs]
    train_ex, held_ex = fdata.split(exs, max(cfg.task.eval_fraction, 0.2), cfg.train.seed)
    by_id = {p[0]: p for p in pairs}
    labels = nli.options  # MedNLI's three, or the labels the file uses (NLI4CT: two)
    lid = {lab: i for i, lab in enumerate(labels)}
    path = resolve(name, settings.paths.models_dir).path
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id=lid,
        )
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(f"cannot load encoder {name!r} from {path}: {e}") from None

    def ds(items: list[tasks.Example]) -> Any:
        p = [by_id[e.id] for e in items]
        enc = tok(
            [x[1] for x in p],
            [x[2] for x in p],
            truncation=True,
            max_length=min(cfg.task.max_seq_length, 512),
        )
        return Dataset.from_dict({**enc, "labels": [lid[x[3]] for x in p]})

    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    with staged_dir(output) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp / "checkpoints"),
            num_train_epochs=cfg.train.epochs,
            max_steps=cfg.train.max_steps,
            learning_rate=cfg.train.learning_rate,
            per_device_train_batch_size=cfg.train.batch_size,
            per_device_eval_batch_size=cfg.train.batch_size,
            weight_decay=cfg.train.weight_decay,
            warmup_steps=cfg.train.warmup_steps or cfg.train.warmup_ratio,
            logging_steps=cfg.train.logging_steps,
            save_strategy="no",
            report_to=[],
            seed=cfg.train.seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=False,
        )
        from transformers import DataCollatorWithPadding

        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=ds(train_ex),
            data_collator=DataCollatorWithPadding(tok),
        )
        with contextlib.redirect_stdout(sys.stderr):  # Trainer print()s its logs
            res = trainer.train()
            logits: Any = trainer.predict(ds(held_ex)).predictions
        pred = [labels[int(i)] for i in logits.argmax(-1)]
        gold = [str(e.label) for e in held_ex]
        from medllm.metrics import classification_report

        report = classification_report(gold, pred, labels, seed=cfg.train.seed)
        metrics = {
            "model": name,
            "train_examples": len(train_ex),
            "eval_examples": len(held_ex),
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "classification_report": report,
            "final_train_loss": res.training_loss,
            "global_step": trainer.state.global_step,
            "wall_s": time.perf_counter() - t0,
        }
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return FinetuneResult(output, metrics)
