"""``medllm finetune --head linear``: a linear label head on a frozen causal LM.

The base model reads each training prompt (the same chat-formatted prompt label scoring uses);
one layer's pooled hidden state feeds a standardised logistic regression whose layer (when
``task.head_layer`` lists candidates) and regularisation are chosen by repeated
cross-validation on the training examples (never on the held-out ones, which give
the reported eval accuracy). No weight of the LM changes, so it trains in minutes on a CPU.
The output directory holds ``head.json``, ``config.yaml``, ``metrics.json`` and ``split.json``
and loads wherever an adapter does (``--adapter DIR``): see :mod:`medllm.scoring.heads`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import ConfigError
from medllm.finetune import tasks
from medllm.finetune.config import dump_config
from medllm.finetune.train import FinetuneResult, default_output, load_examples
from medllm.fsutil import refuse_overwrite, staged_dir

if TYPE_CHECKING:
    from medllm.config import Settings
    from medllm.finetune.config import FinetuneConfig
    from medllm.scoring.heads import LinearHead

logger = logging.getLogger(__name__)


def train_linear_head(
    cfg: FinetuneConfig,
    settings: Settings,
    output: Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    from medllm.metrics import accuracy, macro_f1
    from medllm.models.registry import chat_template, load_hf_model
    from medllm.scoring import chat_prompt
    from medllm.scoring.heads import pooled_layers

    t = cfg.task
    if t.name not in tasks.OPTIONS:
        raise ConfigError(f"--head linear is for the label tasks ({', '.join(tasks.OPTIONS)})")
    cfg.check_head("linear")
    output = (output or default_output(cfg, settings)).expanduser().resolve()
    refuse_overwrite(output, overwrite)
    ex = load_examples(cfg, settings)  # data errors before any model is loaded
    t0 = time.perf_counter()
    model, tok, _ = load_hf_model(cfg.model.name, models_dir=settings.paths.models_dir)
    tok.chat_template = chat_template(None, tok.chat_template, cfg.model.chat_template)
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
    head, cv = fit_on_examples(ex.train, lambda m: feats(m, layers), cfg, progress=progress)
    metrics: dict[str, object] = {
        "head": "linear",
        "layer": head.layer,
        "pooling": t.head_pooling,
        "C": head.C,
        "cv_accuracy": cv[head.layer][str(head.C)],
        "cv_accuracy_by_layer": {str(n): by_c for n, by_c in cv.items()},
        "train_examples": len(ex.train),
        "train_extra_views": sum(len(e.views) for e in ex.train),
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


def fit_on_examples(
    train: list[tasks.Example],
    features: Callable[[list[tasks.Messages]], Mapping[int, Any]],
    cfg: FinetuneConfig,
    *,
    progress: bool = False,
) -> tuple[LinearHead, dict[int, dict[str, float]]]:
    """:func:`medllm.scoring.heads.fit_head` on training examples and their training-only views.
    ``features`` maps prompt turns to {candidate layer: n x hidden}."""
    from medllm.scoring.heads import fit_head

    t = cfg.task
    views = [(i, v) for i, e in enumerate(train) for v in e.views]
    return fit_head(
        features([e.messages for e in train]),
        [str(e.label) for e in train],
        list(tasks.OPTIONS[t.name]),
        base=cfg.model.name,
        pooling=t.head_pooling,
        max_length=t.max_seq_length,
        extra=features([v for _, v in views]) if views else None,
        extra_labels=[str(train[i].label) for i, _ in views],
        extra_groups=[i for i, _ in views],
        seed=cfg.train.seed,
        progress=progress,
    )
