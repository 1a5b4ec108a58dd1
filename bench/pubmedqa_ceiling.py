"""How much yes/no/maybe signal is there to learn from the 500 non-test PQA-L items?

    .venv/bin/python bench/pubmedqa_ceiling.py [--data ../shared/data/pubmedqa]

1. A bag-of-words ceiling: TF-IDF (1- and 1-2-grams) + logistic regression trained on the 500
   non-test PQA-L questions (question + abstract), scored on the 500 official test questions,
   over a small grid of C, with and without balanced class weights.
2. When bench/out/finetune_pubmedqa.json exists (``bench/finetune.py pubmedqa``): the ROC AUC
   of log p(yes) - log p(no) for separating gold "yes" from gold "no" test questions, for the
   base and the fine-tuned model — 0.5 means the label scores carry no signal, whatever the
   calibration.

Writes bench/out/pubmedqa_ceiling.json. Needs scikit-learn (the ``eval`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medllm.pubmedqa import PubMedQARecord

OUT = Path(__file__).parent / "out"


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from medllm.eval.pubmedqa import load_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/pubmedqa")
    ap.add_argument("--sections", nargs="*", default=None, help="e.g. results (default: all)")
    args = ap.parse_args()
    data = Path(args.data)
    records, test = load_split(data / "ori_pqal.json", data / "test_ground_truth.json", "all")
    recs = {r.pmid: r for r in records}
    train_ids = [k for k in recs if k not in test]
    test_ids = [k for k in recs if k in test]

    def text(r: PubMedQARecord) -> str:
        return r.question + " " + r.sections_text(args.sections)

    y_tr = [recs[k].final_decision for k in train_ids]
    y_te = [test[k] for k in test_ids]
    rows = []
    for ngram in ((1, 1), (1, 2)):
        vec = TfidfVectorizer(ngram_range=ngram, min_df=2, sublinear_tf=True)
        x_tr = vec.fit_transform([text(recs[k]) for k in train_ids])
        x_te = vec.transform([text(recs[k]) for k in test_ids])
        for c in (0.3, 1.0, 3.0, 10.0):
            for cw in (None, "balanced"):
                clf = LogisticRegression(C=c, max_iter=2000, class_weight=cw).fit(x_tr, y_tr)
                p = list(clf.predict(x_te))
                rows.append(
                    {
                        "ngram": list(ngram),
                        "C": c,
                        "class_weight": cw,
                        "accuracy": round(accuracy_score(y_te, p), 3),
                        "macro_f1": round(f1_score(y_te, p, average="macro"), 3),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["accuracy"])
    print(f"best TF-IDF + LR test accuracy: {best['accuracy']} ({best})")
    report: dict[str, Any] = {"sections": args.sections, "tfidf_lr": rows, "tfidf_lr_best": best}

    ft = OUT / "finetune_pubmedqa.json"
    if ft.is_file():
        res = json.loads(ft.read_text())["results"]
        aucs = {}
        for name, r in res.items():
            probs = r.get("test_probs") or {}
            ids = [i for i in probs if test.get(i) in ("yes", "no")]
            if not ids:
                continue
            s = [math.log(probs[i]["yes"]) - math.log(probs[i]["no"]) for i in ids]
            aucs[name] = round(float(roc_auc_score([test[i] == "yes" for i in ids], s)), 3)
        print(f"yes-vs-no ROC AUC of the label scores on test ({ft.name}): {aucs}")
        report["label_score_auc"] = aucs
    OUT.mkdir(exist_ok=True)
    (OUT / "pubmedqa_ceiling.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
