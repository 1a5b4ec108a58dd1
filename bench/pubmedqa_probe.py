"""Is there yes/no/maybe signal in SmolLM2-135M's own hidden states? A linear probe.

    .venv/bin/python bench/pubmedqa_probe.py [--data ../shared/data/pubmedqa] [--sections results]

For every PQA-L question the frozen base model reads the gold-context prompt (the one
``medllm eval pubmedqa --mode gold-context`` uses; ``--sections`` keeps only those abstract
sections, as ``task.context_sections`` does in training). Features: the hidden state of the
last prompt token and the mean over the prompt, at layers 6/12/18/24/30. A standardised
logistic regression is fitted on the 500 non-test questions, its C and class weighting chosen
by 5-fold cross-validation **on those training questions only**, and scored on the 500
official test questions.

A fine-tune of 400 items rarely extracts more than a well-regularised probe of the same
model's features finds: the probe bounds what label-token fine-tuning can reach here. The
configuration to believe is the one with the best cross-validated accuracy (chosen without
looking at test); the best test figure over all rows is printed too, as an optimistic bound.

Writes bench/out/pubmedqa_probe.json. Needs scikit-learn (the ``eval`` extra). About 10 min
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out"
LAYERS = (6, 12, 18, 24, 30)


def features(sections: list[str] | None, data: Path) -> tuple[dict[str, Any], dict[str, str]]:
    import numpy as np
    import torch

    from medllm.config import Settings
    from medllm.eval.pubmedqa import load_split
    from medllm.finetune.tasks import pubmedqa_messages
    from medllm.models import load_hf_model
    from medllm.scoring import chat_prompt

    records, test = load_split(data / "ori_pqal.json", data / "test_ground_truth.json", "all")
    s = Settings.load(config_file=False)
    model, tok, _ = load_hf_model(
        "smollm2-135m-instruct", models_dir=s.paths.models_dir, device="cpu"
    )
    model.eval()
    feats: dict[str, Any] = {}
    t0 = time.perf_counter()
    for i, r in enumerate(records):
        prompt = chat_prompt(tok, pubmedqa_messages(r.question, r.sections_text(sections)))
        enc = tok(prompt, return_tensors="pt", truncation=True, max_length=768)
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        feats[r.pmid] = (
            np.stack([torch.cat([hs[n][0][-1], hs[n][0].mean(0)]).numpy() for n in LAYERS]),
            r.final_decision,
        )
        if i % 100 == 0:
            print(f"{i}/{len(records)} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
    return feats, test


def main() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/pubmedqa")
    ap.add_argument("--sections", nargs="*", default=None, help="e.g. results (default: all)")
    args = ap.parse_args()
    feats, test = features(args.sections, Path(args.data))
    train_ids = [k for k in feats if k not in test]
    test_ids = [k for k in feats if k in test]
    y_tr = [feats[k][1] for k in train_ids]
    y_te = [test[k] for k in test_ids]
    width = next(iter(feats.values()))[0].shape[1] // 2
    rows: list[dict[str, Any]] = []
    for li, layer in enumerate(LAYERS):
        for pool, cols in (("last", slice(0, width)), ("mean", slice(width, 2 * width))):
            x_tr = np.stack([feats[k][0][li][cols] for k in train_ids])
            x_te = np.stack([feats[k][0][li][cols] for k in test_ids])

            def clf(c: float, cw: str | None) -> Any:
                lr = LogisticRegression(C=c, max_iter=3000, class_weight=cw)
                return make_pipeline(StandardScaler(), lr)

            cv, c, cw = max(
                (float(cross_val_score(clf(c, cw), x_tr, y_tr, cv=5).mean()), c, cw)
                for c in (0.001, 0.01, 0.1, 1.0)
                for cw in (None, "balanced")
            )
            pred = clf(c, cw).fit(x_tr, y_tr).predict(x_te)
            rows.append(
                {
                    "layer": layer,
                    "pool": pool,
                    "C": c,
                    "class_weight": cw,
                    "cv_accuracy": round(cv, 3),
                    "test_accuracy": round(float(accuracy_score(y_te, pred)), 3),
                    "test_macro_f1": round(float(f1_score(y_te, pred, average="macro")), 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    chosen = max(rows, key=lambda r: r["cv_accuracy"])
    best = max(rows, key=lambda r: r["test_accuracy"])
    print(f"chosen by cross-validation on training items: {chosen}")
    print(f"best test accuracy over all rows (optimistic): {best}")
    OUT.mkdir(exist_ok=True)
    report = {"sections": args.sections, "rows": rows, "chosen_by_cv": chosen, "best_test": best}
    (OUT / "pubmedqa_probe.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
