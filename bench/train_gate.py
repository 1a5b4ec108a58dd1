"""Fit the answerability gate (medllm/agents/gate.json) on PQA-L training questions.

    MEDLLM_HOME=/tmp/mh python bench/train_gate.py [--pubmedqa ../shared/data/pubmedqa] [--k 10]

1. Ingests PQA-L (all 1,000 abstracts; a no-op when already there) and, for each of the 500
   questions *outside* the official test split, retrieves the top ``k`` abstracts (hybrid, the
   engine's mode). Pairs: the question's own abstract = positive (addresses it), every other
   retrieved abstract = hard negative (same field, other question).
2. Chooses the regularisation C by 5-fold cross-validation grouped by question (log-loss),
   then the threshold on the out-of-fold probabilities: the one that maximises the mean of
   (a) the share of questions answered when their abstract is indexed (some retrieved abstract
   in the engine's top_k passes) and (b) the share abstained on when it is hidden (no other
   retrieved abstract passes).
3. Refits on all training pairs and writes gate.json with the CV figures in ``meta``.

The 500 official test questions are never read here (they are scored once, through the engine,
by ``medllm eval pubmedqa --mode rag|leave-gold-out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def collect(
    settings: Any, records: list[Any], k: int, keep_text: bool = False
) -> list[dict[str, Any]]:
    from rich.progress import track

    from medllm.agents.gate import instruction_reason, pair_features
    from medllm.retrieval import Retriever

    r = Retriever.from_settings(settings)
    rows = []
    for rec in track(records, description="retrieving + features"):
        for cond, hide in (("present", ()), ("hidden", (rec.pmid,))):
            docs = r.search(rec.question, k=k, mode=settings.retrieval.mode, exclude=hide)
            for d in docs:
                if instruction_reason(d.text):
                    continue
                rows.append(
                    {
                        "q": rec.pmid,
                        **({"question": rec.question, "text": d.text} if keep_text else {}),
                        "cond": cond,
                        "doc": d.doc_id,
                        "rank": d.rank,
                        "y": int(d.doc_id == rec.pmid),
                        "x": pair_features(rec.question, d.text, d.similarity, r.idf),
                    }
                )
    return rows


def question_rates(rows: list[dict[str, Any]], prob: np.ndarray, t: float, top_k: int) -> dict:
    """Answered-with-gold, abstained-without-gold and gold-passes rates over questions."""
    by_q: dict[str, list[tuple[str, int, int, float]]] = {}
    for row, p in zip(rows, prob, strict=True):
        by_q.setdefault(row["q"], []).append((row["cond"], row["rank"], row["y"], float(p)))
    answered = abstained = gold_pass = 0
    for items in by_q.values():
        present = [(y, p) for c, rank, y, p in items if c == "present" and rank <= top_k]
        hidden = [p for c, rank, _, p in items if c == "hidden" and rank <= top_k]
        answered += any(p >= t for _, p in present)
        gold_pass += any(y and p >= t for y, p in present)
        abstained += not any(p >= t for p in hidden)
    n = len(by_q)
    return {
        "questions": n,
        "answer_rate_gold_present": answered / n,
        "gold_passes_rate": gold_pass / n,
        "abstain_rate_gold_hidden": abstained / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared/data/pubmedqa"))
    ap.add_argument("--k", type=int, default=10, help="abstracts retrieved per question")
    ap.add_argument("--out", default=str(ROOT / "medllm/agents/gate.json"))
    ap.add_argument("--features-cache", default=None, help="reuse/write the pairs here (JSON)")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    from medllm import pubmedqa
    from medllm.agents.gate import FEATURES, GateModel
    from medllm.config import Settings
    from medllm.eval.base import sha256_file

    settings = Settings.load()
    src = Path(args.pubmedqa)
    pqal, gt = src / "ori_pqal.json", src / "test_ground_truth.json"
    test = set(pubmedqa.load_test_pmids(gt))
    records = [r for r in pubmedqa.load(pqal, strict=True).records if r.pmid not in test]
    cache = Path(args.features_cache) if args.features_cache else None
    if cache and cache.is_file():
        rows = json.loads(cache.read_text())
    else:
        from medllm.pipelines.ingest import ingest_pubmedqa

        ingest_pubmedqa(settings, source=pqal)
        t0 = time.perf_counter()
        rows = collect(settings, records, args.k)
        print(f"features of {len(rows)} pairs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if cache:
            cache.write_text(json.dumps(rows))
    X = np.array([r["x"] for r in rows], dtype=np.float64)
    y = np.array([r["y"] for r in rows])
    groups = np.array([r["q"] for r in rows])
    top_k = settings.retrieval.top_k

    cv = GroupKFold(n_splits=5)
    best: tuple[float, float, np.ndarray] | None = None
    for c in (0.01, 0.1, 1.0, 10.0):
        oof = np.zeros(len(y))
        for tr, va in cv.split(X, y, groups):
            sc = StandardScaler().fit(X[tr])
            m = LogisticRegression(C=c, max_iter=2000).fit(sc.transform(X[tr]), y[tr])
            oof[va] = m.predict_proba(sc.transform(X[va]))[:, 1]
        loss = log_loss(y, oof)
        print(f"C={c}: CV log-loss {loss:.4f}, AUC {roc_auc_score(y, oof):.4f}", file=sys.stderr)
        if best is None or loss < best[1]:
            best = (c, loss, oof)
    assert best is not None
    c, loss, oof = best
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    scored = []
    for t in grid:
        rates = question_rates(rows, oof, float(t), top_k)
        score = (rates["answer_rate_gold_present"] + rates["abstain_rate_gold_hidden"]) / 2
        scored.append((score, float(t), rates))
    score, t, rates = max(scored, key=lambda x: (x[0], -abs(x[1] - 0.5)))
    print(f"chosen C={c}, threshold {t:.2f}: {rates}", file=sys.stderr)

    sc = StandardScaler().fit(X)
    m = LogisticRegression(C=c, max_iter=2000).fit(sc.transform(X), y)
    gate = GateModel(
        mean=[float(v) for v in sc.mean_],
        scale=[float(v) for v in sc.scale_],
        coef=[float(v) for v in m.coef_[0]],
        intercept=float(m.intercept_[0]),
        threshold=t,
        meta={
            "trained_on": "PQA-L questions outside the official test split, each retrieved "
            "with its own abstract indexed and hidden "
            f"({len(set(groups))} questions, {len(y)} pairs, {int(y.sum())} positive)",
            "data_sha256": sha256_file(pqal),
            "embedding": settings.models.embedding,
            "retrieval": f"{settings.retrieval.mode}, k={args.k}",
            "C": c,
            "cv_log_loss": round(float(loss), 4),
            "cv_auc": round(float(roc_auc_score(y, oof)), 4),
            "cv_question_rates": {k: round(v, 4) for k, v in rates.items() if k != "questions"},
            "features": list(FEATURES),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": "python bench/train_gate.py",
        },
    )
    Path(args.out).write_text(json.dumps(gate.to_dict(), indent=2) + "\n")
    print(json.dumps(gate.to_dict(), indent=2))


if __name__ == "__main__":
    main()
