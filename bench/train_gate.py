"""Fit the answerability gate (medllm/agents/gate.json) on PQA-L training questions.

    MEDLLM_HOME=/tmp/mh python bench/train_gate.py [--pubmedqa ../shared/data/pubmedqa] [--k 10]

1. Ingests PQA-L (all 1,000 abstracts; a no-op when already there) and, for each of the 500
   questions *outside* the official test split, retrieves the top ``k`` abstracts (hybrid, the
   engine's mode). Pairs: the question's own abstract = positive (addresses it), every other
   retrieved abstract = hard negative (same field, other question).
2. Stage 1: chooses the regularisation C by 5-fold cross-validation grouped by question
   (log-loss), then the threshold on the out-of-fold probabilities: the one nearest the
   issue's targets, maximising min(answered - 0.95, abstained - 0.90) where (a) answered = the
   share of questions answered when their abstract is indexed (some retrieved abstract in the
   engine's top_k passes) and (b) abstained = the share abstained on when it is hidden (no
   other retrieved abstract passes); ties by their mean.
3. Stage 2 (``--no-lm`` skips it): every top_k pair whose out-of-fold stage-1 probability lies
   in ``--band`` is scored by the question-likelihood model (medllm/agents/gate_lm.py, ~1.3 s
   a pair; cached in ``--lm-cache``); a logistic regression over (stage-1 log-odds, pmi) is
   cross-validated on the same folds and its threshold chosen by the same rule (in use, the
   band applies to the refitted stage 1's probabilities).
4. Refits both stages on all training pairs and writes gate.json with the CV figures in
   ``meta``.

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


def choose_threshold(
    rows: list[dict[str, Any]], prob: np.ndarray, top_k: int
) -> tuple[float, dict[str, float]]:
    """The threshold nearest the targets (answered >= 0.95 with the gold indexed, abstained
    >= 0.90 with it hidden): max of the smaller margin, ties by the mean of the two rates."""
    scored = []
    for t in np.round(np.arange(0.03, 0.96, 0.01), 2):
        r = question_rates(rows, prob, float(t), top_k)
        a, b = r["answer_rate_gold_present"], r["abstain_rate_gold_hidden"]
        scored.append((min(a - 0.95, b - 0.90), (a + b) / 2, float(t), r))
    _, _, t, rates = max(scored, key=lambda x: (x[0], x[1], -abs(x[2] - 0.5)))
    return t, rates


def fit_lm_stage(
    rows: list[dict[str, Any]],
    oof: np.ndarray,
    band: tuple[float, float],
    top_k: int,
    cv: Any,
    cache_path: str | None,
) -> tuple[Any, dict[str, Any]]:
    """Stage 2 on the pairs in ``band``: their pmi, cross-validated fit, threshold, refit."""
    from rich.progress import track
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from medllm.agents.gate import LMStage
    from medllm.agents.gate_lm import SCORER_MODEL, load_scorer
    from medllm.config import Settings

    if rows and "text" not in rows[0]:
        sys.exit("the --features-cache file has no texts (written with --no-lm): delete it")
    idx = [i for i, r in enumerate(rows) if r["rank"] <= top_k and band[0] <= oof[i] <= band[1]]
    cache: dict[str, float] = {}
    cpath = Path(cache_path) if cache_path else None
    if cpath and cpath.is_file():
        cache = json.loads(cpath.read_text())
    todo = {f"{rows[i]['q']}|{rows[i]['doc']}": i for i in idx}
    todo = {k: i for k, i in todo.items() if k not in cache}
    t0 = time.perf_counter()
    if todo:
        settings = Settings.load()
        scorer = load_scorer(str(settings.paths.models_dir), settings.models.gguf_weights)
        for n, (key, i) in enumerate(track(list(todo.items()), description="question likelihood")):
            cache[key] = scorer(rows[i]["question"], rows[i]["text"])
            if cpath and n % 50 == 0:
                cpath.write_text(json.dumps(cache))
        if cpath:
            cpath.write_text(json.dumps(cache))
    took = time.perf_counter() - t0
    print(f"stage 2: {len(idx)} pairs in band, {len(todo)} scored in {took:.0f} s", file=sys.stderr)
    sel = np.array(idx)
    p1 = np.clip(oof[sel], 1e-9, 1 - 1e-9)
    Xb = np.column_stack(
        [np.log(p1 / (1 - p1)), [cache[f"{rows[i]['q']}|{rows[i]['doc']}"] for i in idx]]
    )
    yb = np.array([rows[i]["y"] for i in idx])
    gb = np.array([rows[i]["q"] for i in idx])
    oof2 = np.zeros(len(idx))
    for tr, va in cv.split(Xb, yb, gb):
        m2 = LogisticRegression(max_iter=1000).fit(Xb[tr], yb[tr])
        oof2[va] = m2.predict_proba(Xb[va])[:, 1]
    combined = oof.copy()
    combined[sel] = oof2
    t, rates = choose_threshold(rows, combined, top_k)
    m2 = LogisticRegression(max_iter=1000).fit(Xb, yb)
    auc1, auc2 = roc_auc_score(yb, Xb[:, 0]), roc_auc_score(yb, oof2)
    print(
        f"stage 2: band AUC {auc1:.3f} -> {auc2:.3f}; threshold {t:.2f}: {rates}",
        file=sys.stderr,
    )
    stage = LMStage(
        band=band,
        coef=[float(v) for v in m2.coef_[0]],
        intercept=float(m2.intercept_[0]),
        threshold=t,
    )
    meta = {
        "lm_scorer": SCORER_MODEL,
        "lm_band_pairs": len(idx),
        "lm_band_auc": {"stage1": round(float(auc1), 4), "with_lm": round(float(auc2), 4)},
        "lm_cv_question_rates": {k: round(v, 4) for k, v in rates.items() if k != "questions"},
    }
    return stage, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared/data/pubmedqa"))
    ap.add_argument("--k", type=int, default=10, help="abstracts retrieved per question")
    ap.add_argument("--out", default=str(ROOT / "medllm/agents/gate.json"))
    ap.add_argument("--features-cache", default=None, help="reuse/write the pairs here (JSON)")
    ap.add_argument("--no-lm", action="store_true", help="stage 1 only (no language model)")
    ap.add_argument("--band", default="0.03,0.6", help="stage-1 probabilities sent to stage 2")
    ap.add_argument("--lm-cache", default=None, help="reuse/write the pairs' pmi here (JSON)")
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
        rows = collect(settings, records, args.k, keep_text=not args.no_lm)
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
    t, rates = choose_threshold(rows, oof, top_k)
    print(f"stage 1: C={c}, threshold {t:.2f}: {rates}", file=sys.stderr)

    sc = StandardScaler().fit(X)
    m = LogisticRegression(C=c, max_iter=2000).fit(sc.transform(X), y)
    lm_stage, lm_meta = None, dict[str, Any]()
    if not args.no_lm:
        lo, hi = (float(v) for v in args.band.split(","))
        lm_stage, lm_meta = fit_lm_stage(rows, oof, (lo, hi), top_k, cv, args.lm_cache)
    gate = GateModel(
        mean=[float(v) for v in sc.mean_],
        scale=[float(v) for v in sc.scale_],
        coef=[float(v) for v in m.coef_[0]],
        intercept=float(m.intercept_[0]),
        threshold=t,
        lm=lm_stage,
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
            **lm_meta,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": "python bench/train_gate.py",
        },
    )
    Path(args.out).write_text(json.dumps(gate.to_dict(), indent=2) + "\n")
    print(json.dumps(gate.to_dict(), indent=2))


if __name__ == "__main__":
    main()
