"""Dense search breadth (HNSW ``ef_search``): how close Chroma's approximate nearest chunks are
to the exact ones, and what that does to hit@1, on a real store and real questions.

    MEDLLM_HOME=/tmp/mh13 OMP_NUM_THREADS=2 .venv/bin/python bench/hnsw_recall.py \\
        --collection mixed --split train --ef 100,200,300,400,600

For each ``ef`` (a fresh process each: Chroma reads the setting when a process first loads the
index) the store is opened with ``retrieval.ef_search = ef`` — which sets it on the collection,
as medllm does — and for every PQA-L question of the split: Chroma's ``candidate_k`` nearest
chunks against the exact ones (all of the store's vectors, brute force), and the engine's own
dense and hybrid hit@1 (``Retriever.search``).
Writes bench/out/hnsw_recall_<collection>_<split>.json. The collection keeps the last ``ef``
run; the default setting puts it back on the next open.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
OUT = Path(__file__).parent / "out"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pubmedqa"


def one(collection: str, ef: int, split: str, source: Path) -> dict[str, Any]:
    import numpy as np

    from medllm import pubmedqa
    from medllm.config import Settings
    from medllm.retrieval import Retriever
    from medllm.storage.store import ef_search_of

    s = Settings.load(retrieval={"ef_search": ef})
    r = Retriever.from_settings(s, collection)
    coll = r._collection
    assert ef_search_of(coll) == ef, ef_search_of(coll)
    test = set(pubmedqa.load_test_pmids(source / "test_ground_truth.json"))
    recs = [
        x
        for x in pubmedqa.load(source / "ori_pqal.json", strict=True).records
        if split == "all" or (x.pmid in test) == (split == "test")
    ]
    got_all = coll.get(include=["embeddings"])
    emb = np.asarray(got_all["embeddings"], dtype=np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    ids = got_all["ids"]
    n = s.retrieval.candidate_k
    recall, top1, ms = [], 0, []
    hits = {"dense": 0, "hybrid": 0}
    for x in recs:
        q = r._embed_query(x.question)
        t = time.perf_counter()
        got = coll.query(query_embeddings=[q.tolist()], n_results=n, include=["distances"])
        ms.append(1000 * (time.perf_counter() - t))
        exact = [ids[i] for i in np.argsort(-(emb @ q))[:n]]
        recall.append(len(set(got["ids"][0]) & set(exact)) / n)
        top1 += got["ids"][0][0] == exact[0]
        for mode in hits:
            d = r.search(x.question, k=1, mode=mode)
            hits[mode] += bool(d) and d[0].doc_id == x.pmid
    k = len(recs)
    return {
        "ef_search": ef,
        "questions": k,
        "chunks": len(ids),
        f"recall_at_{n}": round(float(np.mean(recall)), 4),
        "questions_with_all_exact": sum(v == 1.0 for v in recall),
        "nearest_chunk_found": round(top1 / k, 4),
        "dense_hit1": round(hits["dense"] / k, 4),
        "hybrid_hit1": round(hits["hybrid"] / k, 4),
        "chroma_query_ms_p50": round(statistics.median(ms), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--collection", default="mixed")
    ap.add_argument("--split", choices=["train", "test", "all"], default="train")
    ap.add_argument("--ef", default="100,200,300,400,600", help="comma-separated ef_search")
    ap.add_argument("--source", default=str(SHARED), help="PubMedQA folder")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = one(args.collection, args.one, args.split, Path(args.source))
        print("RESULT " + json.dumps(res))
        return
    rows = []
    for ef in [int(e) for e in args.ef.split(",")]:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(ef), "--collection", args.collection,
             "--split", args.split, "--source", args.source],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(proc.stdout.split("RESULT ", 1)[1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    OUT.mkdir(exist_ok=True)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "collection": args.collection,
        "split": args.split,
        "load": round(os.getloadavg()[0], 1),
        "rows": rows,
    }
    (OUT / f"hnsw_recall_{args.collection}_{args.split}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
