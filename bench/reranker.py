"""Hit@1 with and without a cross-encoder reranker (``retrieval.reranker``), via the engine.

    MEDLLM_HOME=/tmp/mh python bench/reranker.py --reranker cross-encoder/ms-marco-MiniLM-L-6-v2 \\
        --collection mixed [--split train] [--rerank-top 20]

``Retriever.search`` (what `ask` and `retrieve` use) over the PQA-L questions of ``--split``
(train: the 500 outside the official test split — choose settings on these) and the
hand-written NCBI-disease questions of bench/questions/ncbi_yesno.jsonl (data a choice was not
tuned on), first with the store's own order, then reranked, in the same run; with the mean
search time of each. Store ``mixed`` (PQA-L with every other shared corpus as distractors):
bench/mixed_store.py. No reranking-trained cross-encoder is reachable on the machine this was
written on (hub downloads), so it has not been measured there: issue 13's section of
bench/RESULTS.md says what to compare against.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reranker", required=True, help="hub id, local directory or known name")
    ap.add_argument("--collection", default="mixed")
    ap.add_argument("--rerank-top", type=int, default=20)
    ap.add_argument("--mode", default="hybrid")
    ap.add_argument("--split", choices=("train", "test", "all"), default="train")
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared/data/pubmedqa"))
    args = ap.parse_args()

    from medllm import pubmedqa
    from medllm.config import Settings
    from medllm.retrieval import Retriever

    src = Path(args.pubmedqa)
    test = set(pubmedqa.load_test_pmids(src / "test_ground_truth.json"))
    sets: dict[str, list[tuple[str, list[str]]]] = {
        f"pubmedqa {args.split}": [
            (x.question, [x.pmid])
            for x in pubmedqa.load(src / "ori_pqal.json", strict=True).records
            if args.split == "all" or (x.pmid in test) == (args.split == "test")
        ],
        "ncbi": [
            (rec["question"], [str(g) for g in rec["gold"]])
            for line in (ROOT / "bench/questions/ncbi_yesno.jsonl").read_text().splitlines()
            if line.strip()
            for rec in [json.loads(line)]
        ],
    }
    base = Settings.load()
    for reranker in (None, args.reranker):
        s = base.with_overrides(retrieval={"reranker": reranker, "rerank_top": args.rerank_top})
        r = Retriever.from_settings(s, args.collection)
        row: dict[str, object] = {"reranker": reranker}
        if reranker:
            r.search("warm-up query loading the cross-encoder", k=1, mode=args.mode)
        for name, qs in sets.items():
            t0, hits = time.perf_counter(), 0
            for question, gold in qs:
                got = r.search(question, k=1, mode=args.mode)
                hits += bool(got) and got[0].doc_id in gold
            ms = 1000 * (time.perf_counter() - t0) / max(len(qs), 1)
            row[f"{name} ({len(qs)})"] = hits
            row[f"{name} ms/query"] = round(ms, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
