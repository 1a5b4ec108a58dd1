"""Hybrid hit@1 of the PQA-L questions with and without the answerability gate as a reranker.

    MEDLLM_HOME=/tmp/mh python bench/gate_rerank.py --collection mixed [--k 10]

For each of the 1,000 PQA-L questions: the store's hybrid top ``k`` (the order users get from
`medllm retrieve`), and the same documents re-ordered by the gate's probability (documents the
gate rejects as instructions go last). hit@1 = the question's own abstract ranked first.
Reported separately for the 500 questions the gate was trained on and the 500 official test
questions (never used to fit or choose it). Writes bench/out/gate_rerank.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", default="pubmedqa")
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared/data/pubmedqa"))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench/out/gate_rerank.json"))
    args = ap.parse_args()

    from rich.progress import track

    from medllm import pubmedqa
    from medllm.agents.gate import judge
    from medllm.config import Settings
    from medllm.retrieval import Retriever

    s = Settings.load()
    r = Retriever.from_settings(s, args.collection)
    src = Path(args.pubmedqa)
    test = set(pubmedqa.load_test_pmids(src / "test_ground_truth.json"))
    recs = pubmedqa.load(src / "ori_pqal.json", strict=True).records
    hits: dict[str, dict[str, int]] = {
        split: {"n": 0, "retrieval": 0, "gate": 0} for split in ("train", "test")
    }
    t0 = time.perf_counter()
    for rec in track(recs, description=f"hit@1 on {args.collection}"):
        docs = r.search(rec.question, k=args.k, mode="hybrid")
        order = sorted(judge(rec.question, docs, r.idf), key=lambda x: -x.prob)
        h = hits["test" if rec.pmid in test else "train"]
        h["n"] += 1
        h["retrieval"] += bool(docs) and docs[0].doc_id == rec.pmid
        h["gate"] += bool(order) and order[0].doc.doc_id == rec.pmid
    out = {
        "collection": args.collection,
        "store": r.count(),
        "k": args.k,
        "seconds": round(time.perf_counter() - t0, 1),
        **{
            split: {
                "n": h["n"],
                "hit1_hybrid": round(h["retrieval"] / h["n"], 4),
                "hit1_gate_reranked": round(h["gate"] / h["n"], 4),
            }
            for split, h in hits.items()
        },
    }
    n = sum(h["n"] for h in hits.values())
    out["all"] = {
        "n": n,
        "hit1_hybrid": round(sum(h["retrieval"] for h in hits.values()) / n, 4),
        "hit1_gate_reranked": round(sum(h["gate"] for h in hits.values()) / n, 4),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
