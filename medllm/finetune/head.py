"""``medllm finetune --head linear``: a linear label head on a frozen causal LM.

The base model reads each training prompt (the same chat-formatted prompt label scoring uses);
one layer's pooled hidden state feeds a standardised logistic regression whose layer (when
``task.head_layer`` lists candidates) and regularisation are chosen by repeated
cross-validation on the training examples (never on the held-out ones, which give
the reported eval accuracy). No weight of the LM changes, so it trains in minutes on a CPU.
The output directory holds ``head.json``, ``config.yaml``, ``metrics.json`` and ``split.json``
and loads wherever an adapter does (``--adapter DIR``): see :mod:`medllm.heads`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from medllm.errors import ConfigError
from medllm.finetune import tasks
from medllm.finetune.config import dump_config
from medllm.finetune.train import FinetuneResult, default_output, load_examples
from medllm.fsutil import refuse_overwrite, staged_dir

if TYPE_CHECKING:
    from medllm.config import Settings
    from medllm.finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)


def train_linear_head(
    cfg: FinetuneConfig,
    settings: Settings,
    output: Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    from medllm.eval.metrics import accuracy, macro_f1
    from medllm.heads import fit_head, pooled_layers
    from medllm.models import load_hf_model
    from medllm.scoring import chat_prompt

    t = cfg.task
    if t.name not in tasks.OPTIONS:
        raise ConfigError(f"--head linear is for the label tasks ({', '.join(tasks.OPTIONS)})")
    cfg.check_head("linear")
    output = (output or default_output(cfg, settings)).expanduser().resolve()
    refuse_overwrite(output, overwrite)
    ex = load_examples(cfg, settings)  # data errors before any model is loaded
    t0 = time.perf_counter()
    model, tok, _ = load_hf_model(cfg.model.name, models_dir=settings.paths.models_dir)
    if cfg.model.chat_template:
        tok.chat_template = cfg.model.chat_template
    depth = int(model.config.num_hidden_layers)
    wanted = t.head_layer if t.head_layer is not None else max(1, round(depth * 3 / 5))
    layers = sorted(set(wanted if isinstance(wanted, list) else [wanted]))
    if layers[-1] > depth:
        raise ConfigError(f"task.head_layer {wanted}: {cfg.model.name} has {depth} layers")

    def feats(messages: list[tasks.Messages], layers: list[int]) -> dict[int, object]:
        return pooled_layers(
            model,
            tok,
            [chat_prompt(tok, m) for m in messages],
            layers=layers,
            pooling=t.head_pooling,
            max_length=t.max_seq_length,
            progress=progress,
        )

    labels = list(tasks.OPTIONS[t.name])
    views = [(i, v, str(e.label)) for i, e in enumerate(ex.train) for v in e.views]
    head, cv = fit_head(
        feats([e.messages for e in ex.train], layers),
        [str(e.label) for e in ex.train],
        labels,
        base=cfg.model.name,
        pooling=t.head_pooling,
        max_length=t.max_seq_length,
        extra=feats([v for _, v, _ in views], layers) if views else None,
        extra_labels=[lab for _, _, lab in views],
        extra_groups=[i for i, _, _ in views],
        seed=cfg.train.seed,
        progress=progress,
    )
    metrics: dict[str, object] = {
        "head": "linear",
        "layer": head.layer,
        "pooling": t.head_pooling,
        "C": head.C,
        "cv_accuracy": cv[head.layer][str(head.C)],
        "cv_accuracy_by_layer": {str(n): by_c for n, by_c in cv.items()},
        "train_examples": len(ex.train),
        "train_extra_views": len(views),
        "eval_examples": len(ex.held),
        "dropped_test_overlap": ex.dropped_test,
    }
    if ex.held:
        import torch

        held = feats([e.messages for e in ex.held], [head.layer])[head.layer]
        probs = head.probabilities(torch.as_tensor(held))
        pred = [labels[int(i)] for i in probs.argmax(-1)]
        gold = [str(e.label) for e in ex.held]
        metrics["eval_accuracy"] = accuracy(gold, pred)
        metrics["eval_macro_f1"] = macro_f1(gold, pred, labels)
    metrics["wall_s"] = time.perf_counter() - t0
    with staged_dir(output) as tmp:
        head.save(tmp)
        (tmp / "config.yaml").write_text(dump_config(cfg))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "split.json").write_text(
            json.dumps({"train": [e.id for e in ex.train], "eval": [e.id for e in ex.held]})
        )
    logger.info(
        "linear head (layer %d, %s, C=%g) -> %s", head.layer, t.head_pooling, head.C, output
    )
    return FinetuneResult(output, metrics)
