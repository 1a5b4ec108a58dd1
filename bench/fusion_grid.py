"""Hybrid hit@1 of the PQA-L questions under BM25 parameters and score normalisations.

    MEDLLM_HOME=/tmp/mh python bench/fusion_grid.py --collection mixed [--split train]

A throwaway grid, for choosing retrieval settings on the 500 PQA-L questions *outside* the
official test split (``--split train``; ``--split test`` only to report a choice already
made). BM25's k1 and b are set on the store's index for each pair (its segments hold term
counts, so they are query-time parameters: ``SegmentedIndex.set_params``; the store must have
been ingested since the segments came), and each normalisation of the convex fusion is swapped
in for min-max. Nothing on disk changes. Store `mixed`: bench/mixed_store.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NORMS = {
    "minmax": None,  # the shipped rule
    "max": lambda xs: [x / max(xs) if max(xs) > 0 else 0.0 for x in xs],
    "zscore": lambda xs: _z(xs),
}


def _z(xs: list[float]) -> list[float]:
    import statistics

    if len(xs) < 2:
        return [0.0 for _ in xs]
    m, sd = statistics.fmean(xs), statistics.pstdev(xs)
    return [(x - m) / sd if sd > 0 else 0.0 for x in xs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", default="mixed")
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared/data/pubmedqa"))
    ap.add_argument("--split", choices=("train", "test"), default="train")
    ap.add_argument("--k1", default="1.5")
    ap.add_argument("--b", default="0.75")
    ap.add_argument("--alpha", default="0.5")
    ap.add_argument("--norm", default="minmax", help=f"comma list of {', '.join(NORMS)}")
    args = ap.parse_args()

    import medllm.retrieval as retrieval
    from medllm import pubmedqa
    from medllm.config import Settings
    from medllm.retrieval import Retriever

    s = Settings.load()
    r = Retriever.from_settings(s, args.collection)
    src = Path(args.pubmedqa)
    test = set(pubmedqa.load_test_pmids(src / "test_ground_truth.json"))
    recs = [
        x
        for x in pubmedqa.load(src / "ori_pqal.json", strict=True).records
        if (x.pmid in test) == (args.split == "test")
    ]
    bm = r._bm25_index()
    if not hasattr(bm, "set_params"):
        sys.exit("the store's BM25 index is of before the segments: ingest it again first")
    original = retrieval._minmax
    out = []
    for k1, b in itertools.product(
        [float(v) for v in args.k1.split(",")], [float(v) for v in args.b.split(",")]
    ):
        bm.set_params(k1, b)
        for norm, alpha in itertools.product(
            args.norm.split(","), [float(v) for v in args.alpha.split(",")]
        ):
            f = NORMS[norm]
            retrieval._minmax = original if f is None else f  # type: ignore[assignment]
            r.settings.retrieval.hybrid_alpha = alpha
            hits = sum(
                bool(d) and d[0].doc_id == x.pmid
                for x in recs
                for d in [r.search(x.question, k=1, mode="hybrid")]
            )
            row = {"k1": k1, "b": b, "norm": norm, "alpha": alpha, "hit@1": hits / len(recs)}
            print(json.dumps(row), flush=True)
            out.append(row)
    retrieval._minmax = original
    best = max(out, key=lambda x: x["hit@1"])
    print(f"best on {args.split} ({len(recs)} questions): {best}", file=sys.stderr)


if __name__ == "__main__":
    main()
