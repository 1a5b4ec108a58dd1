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
    from medllm.eval.pubmedqa import load_split
    from medllm.finetune.config import load_config
    from medllm.finetune.head import fit_on_examples
    from medllm.finetune.tasks import OPTIONS, pubmedqa_messages
    from medllm.finetune.train import load_examples
    from medllm.metrics import accuracy, macro_f1
    from medllm.models import load_hf_model
    from medllm.scoring import chat_prompt
    from medllm.scoring.heads import pooled_layers

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
    x_train = feats([e.messages for e in train], t.head_layer)
    x_views = feats([v for e in train for v in e.views], t.head_layer)
    test_msgs = [
        pubmedqa_messages(r.question, r.sections_text(t.context_sections)) for r in records
    ]
    x_test = feats(test_msgs, t.head_layer)
    gold = [test[r.pmid] for r in records]
    print(f"features: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    # Cached features, looked up by prompt: every seed reorders the same examples.
    row_of: dict[str, int] = {}
    for e in train:
        row_of[chat_prompt(tok, e.messages)] = len(row_of)
    for e in train:
        for v in e.views:
            row_of[chat_prompt(tok, v)] = len(row_of)
    cached = {n: torch.cat([x_train[n], x_views[n]]) for n in t.head_layer}

    def lookup(messages: list) -> dict:  # type: ignore[type-arg]
        idx = [row_of[chat_prompt(tok, m)] for m in messages]
        return {n: x[idx] for n, x in cached.items()}

    for seed in args.seeds:
        t1 = time.perf_counter()
        # `--seed N` also shuffles the training examples (finetune.data.split), which moves
        # the CV folds: the product's examples and order for this seed.
        cfg_n = cfg.with_overrides(train={"seed": seed})
        head, cv = fit_on_examples(load_examples(cfg_n, s).train, lookup, cfg_n)
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
