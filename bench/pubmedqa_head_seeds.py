"""How much does the PubMedQA linear head depend on its CV folds? One feature pass, several seeds.

    .venv/bin/python bench/pubmedqa_head_seeds.py [--seeds 0 1 2 3] [--data ../shared/data/pubmedqa]

Runs what ``medllm finetune --config smollm2_135m_pubmedqa_head_cpu --seed N`` runs — the
preset's prompts, candidate layers and long-answer views; seed N shuffles the training examples
and the cross-validation folds — but computes the features once for all seeds (in seed 0's
batches: another order pads batches differently, which moves features by float rounding only).
Each seed's head (its CV-chosen layer and C) is then scored on the 500 official test
questions. Seed 0 reproduces the preset's own run. Writes bench/out/pubmedqa_head_seeds.json.
Features ~3 min, then ~6 min per seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pubmedqa"


def main() -> None:
    import torch

    from medllm.config import Settings
    from medllm.eval.metrics import accuracy, macro_f1
    from medllm.eval.pubmedqa import load_split
    from medllm.finetune.config import load_config
    from medllm.finetune.tasks import OPTIONS, pubmedqa_messages
    from medllm.finetune.train import load_examples
    from medllm.heads import fit_head, pooled_layers
    from medllm.models import load_hf_model
    from medllm.scoring import chat_prompt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--data", default=str(SHARED))
    args = ap.parse_args()
    data = Path(args.data)
    cfg = load_config("smollm2_135m_pubmedqa_head_cpu")
    t = cfg.task
    assert isinstance(t.head_layer, list)
    labels = list(OPTIONS["pubmedqa"])
    s = Settings.load(config_file=False, eval={"pubmedqa_dir": str(data)})
    train = load_examples(cfg, s).train
    records, test = load_split(data / "ori_pqal.json", data / "test_ground_truth.json", "test")
    model, tok, _ = load_hf_model(cfg.model.name, models_dir=s.paths.models_dir, device="cpu")

    def feats(messages: list, layers: list[int]) -> dict:  # type: ignore[type-arg]
        prompts = [chat_prompt(tok, m) for m in messages]
        kw = {"pooling": t.head_pooling, "max_length": t.max_seq_length, "progress": True}
        return pooled_layers(model, tok, prompts, layers=layers, **kw)  # type: ignore[arg-type]

    t0 = time.perf_counter()
    views = [(i, v) for i, e in enumerate(train) for v in e.views]
    x_train = feats([e.messages for e in train], t.head_layer)
    x_views = feats([v for _, v in views], t.head_layer)
    test_msgs = [
        pubmedqa_messages(r.question, r.sections_text(t.context_sections)) for r in records
    ]
    x_test = feats(test_msgs, t.head_layer)
    gold = [test[r.pmid] for r in records]
    print(f"features: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    pos = {e.id: i for i, e in enumerate(train)}
    view_row = {train[i].id: k for k, (i, _) in enumerate(views)}
    for seed in args.seeds:
        t1 = time.perf_counter()
        # `--seed N` also shuffles the training examples (finetune.data.split), which moves
        # the CV folds: take the product's order for this seed.
        ordered = load_examples(cfg.with_overrides(train={"seed": seed}), s).train
        rows_n = [pos[e.id] for e in ordered]
        extra_of = [(g, view_row[e.id]) for g, e in enumerate(ordered) if e.id in view_row]
        head, cv = fit_head(
            {n: x[rows_n] for n, x in x_train.items()},
            [str(e.label) for e in ordered],
            labels,
            base=cfg.model.name,
            pooling=t.head_pooling,
            max_length=t.max_seq_length,
            extra={n: x[[k for _, k in extra_of]] for n, x in x_views.items()},
            extra_labels=[str(ordered[g].label) for g, _ in extra_of],
            extra_groups=[g for g, _ in extra_of],
            seed=seed,
        )
        probs = head.probabilities(torch.as_tensor(x_test[head.layer]))
        pred = [labels[int(i)] for i in probs.argmax(-1)]
        rows.append(
            {
                "seed": seed,
                "layer": head.layer,
                "C": head.C,
                "cv_accuracy": round(cv[head.layer][str(head.C)], 4),
                "test_accuracy": accuracy(gold, pred),
                "test_macro_f1": round(macro_f1(gold, pred, labels), 4),
                "fit_s": round(time.perf_counter() - t1, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "pubmedqa_head_seeds.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
