"""Fit the findings model (medllm/agents/findings.json): which sentences of an abstract report
findings, so that a quoted answer quotes one of them rather than the sentence restating the
question.

    python bench/train_findings.py [--pubmedqa ../shared/data/pubmedqa] [--vocab 500]

Data: the PQA-L abstracts *outside* the official test split (that split is never read here),
each split into sentences as the engine splits them (:func:`medllm.agents.prompts.sentences`),
per section so that every sentence keeps its section label; the label is the target (1: a
results/conclusions section, :func:`medllm.agents.findings.is_finding_label`) and is hidden
from the features — the model is for abstracts that carry no labels. Features: the sentence's
words (binary, the ``--vocab`` most frequent seen in ≥ 3 sentences) and its position.
C is chosen by 5-fold cross-validation grouped by abstract (log-loss); the out-of-fold
probabilities then score the quote choice itself (:func:`medllm.agents.findings.choose`, the
labels hidden) against the old choice (most words shared with the question), as the share of
quotes taken from a results/conclusions section, aim-phrased and first sentences. Refit on all,
written with those figures in ``meta``. Runs in ~20 s.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# sentences that state the study's aim — a description of the old choice, not a feature
AIM = re.compile(
    r"\b(purpose|aim|aims|objective|objectives|goal)\s+(of|was|were|is)\b"
    r"|\bwe\s+(sought|aimed|hypothes\w*|evaluated|investigated|examined|assessed|explored"
    r"|studied|tested|compared|determined)\b"
    r"|\bto\s+(determine|assess|evaluate|investigate|examine|compare|test|explore|identify)"
    r"\s+(whether|if|the)\b",
    re.I,
)


def abstracts(pubmedqa: Path) -> list[tuple[str, list[str], list[int]]]:
    """(question, sentences of the label-less abstract, finding targets) per training record."""
    from medllm.agents.findings import is_finding_label
    from medllm.agents.prompts import sentences
    from medllm.pubmedqa import load, load_test_pmids

    test = load_test_pmids(pubmedqa / "test_ground_truth.json")
    out = []
    for r in load(pubmedqa / "ori_pqal.json").records:
        if r.pmid in test:
            continue
        labels = list(r.labels) + [""] * (len(r.contexts) - len(r.labels))
        sents, ys = [], []
        for lab, ctx in zip(labels, r.contexts, strict=False):
            for s in sentences(ctx):
                sents.append(s)
                ys.append(int(is_finding_label(lab)))
        if sents:
            out.append((r.question, sents, ys))
    return out


def design(
    items: list[tuple[str, list[str], list[int]]], vocab: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from medllm.agents.findings import position_features, tokens

    index = {w: j for j, w in enumerate(vocab)}
    rows, ys, groups = [], [], []
    for g, (_, sents, y) in enumerate(items):
        n = len(sents)
        for i, s in enumerate(sents):
            x = np.zeros(len(vocab) + 3)
            for t in tokens(s):
                if (j := index.get(t)) is not None:
                    x[j] = 1.0
            x[len(vocab) :] = position_features(i, n)
            rows.append(x)
            ys.append(y[i])
            groups.append(g)
    return np.array(rows), np.array(ys), np.array(groups)


def vocabulary(items: list[tuple[str, list[str], list[int]]], size: int) -> list[str]:
    from collections import Counter

    from medllm.agents.findings import tokens

    df: Counter[str] = Counter(t for _, sents, _ in items for s in sents for t in tokens(s))
    return [w for w, c in df.most_common() if c >= 3][:size]


def quote_shares(
    items: list[tuple[str, list[str], list[int]]], probs: list[list[float]] | None
) -> dict[str, float]:
    """Where the quote comes from: the shipped choice with ``probs`` (labels hidden), or the
    old one (most words shared with the question) when None."""
    from medllm.agents.citations import _words
    from medllm.agents.findings import choose

    finding = aim = first = 0
    for k, (q, sents, y) in enumerate(items):
        if probs is None:
            i = max(
                range(len(sents)),
                key=lambda i: (len(_words(sents[i]) & _words(q)), -abs(len(sents[i]) - 200)),
            )
        else:
            i = choose(sents, _words(q), _words, probs[k])
        finding += y[i]
        aim += bool(AIM.search(sents[i]))
        first += i == 0
    n = len(items)
    return {
        "from_results_or_conclusions": round(finding / n, 3),
        "aim_phrased": round(aim / n, 3),
        "first_sentence": round(first / n, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared" / "data" / "pubmedqa"))
    ap.add_argument("--vocab", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "medllm" / "agents" / "findings.json"))
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import GroupKFold

    items = abstracts(Path(args.pubmedqa))
    vocab = vocabulary(items, args.vocab)
    X, y, groups = design(items, vocab)
    folds = list(GroupKFold(5).split(X, y, groups))
    best: tuple[float, float, np.ndarray] | None = None
    for c in (0.1, 0.3, 1.0, 3.0):
        oof = np.zeros(len(y))
        for tr, te in folds:
            m = LogisticRegression(C=c, max_iter=3000).fit(X[tr], y[tr])
            oof[te] = m.predict_proba(X[te])[:, 1]
        loss = float(log_loss(y, oof))
        print(f"C={c}: CV log-loss {loss:.4f}, AUC {roc_auc_score(y, oof):.4f}")
        if best is None or loss < best[1]:
            best = (c, loss, oof)
    assert best is not None
    c, loss, oof = best
    per_item, k = [], 0
    for _, sents, _ in items:
        per_item.append([float(p) for p in oof[k : k + len(sents)]])
        k += len(sents)
    old, new = quote_shares(items, None), quote_shares(items, per_item)
    pos_auc = float(roc_auc_score(y, X[:, len(vocab)]))
    print(f"chosen C={c}; position alone AUC {pos_auc:.4f}")
    print("quotes, labels hidden — old:", old)
    print("quotes, labels hidden — new (out-of-fold):", new)

    m = LogisticRegression(C=c, max_iter=3000).fit(X, y)
    coef = m.coef_[0]
    model: dict[str, Any] = {
        "words": {w: round(float(coef[j]), 4) for j, w in enumerate(vocab) if abs(coef[j]) > 1e-4},
        "position": [round(float(v), 4) for v in coef[len(vocab) :]],
        "intercept": round(float(m.intercept_[0]), 4),
        "meta": {
            "trained_on": "PQA-L training abstracts (official test split excluded), labels hidden",
            "abstracts": len(items),
            "sentences": len(y),
            "finding_share": round(float(y.mean()), 3),
            "C": c,
            "cv_log_loss": round(loss, 4),
            "cv_auc": round(float(roc_auc_score(y, oof)), 4),
            "position_only_auc": round(pos_auc, 4),
            "cv_quotes_old": old,
            "cv_quotes_new": new,
            "command": "python bench/train_findings.py",
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        },
    }
    Path(args.out).write_text(json.dumps(model, indent=0, sort_keys=True) + "\n")
    print("wrote", args.out, f"({Path(args.out).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
