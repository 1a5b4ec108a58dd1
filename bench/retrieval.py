"""Retrieval quality on PQA-L: each of the 1,000 questions → its own abstract among the 1,000.

Reports hit@1, hit@5 and MRR@10 for dense, BM25 and hybrid retrieval (convex score fusion for
each --alpha, reciprocal-rank fusion for each --rrf-k), for each chunking configuration and each
set of metadata fields appended to the BM25 text (--bm25-fields; "-" = none), beside the source
tutorial's top-1 figures.

    .venv/bin/python bench/retrieval.py --source ../shared/data/pubmedqa/ori_pqal.json \
        --chunks 512:64,256:32,128:16 --rrf-k 10,60 --alpha 0.5 --bm25-fields meshes,-

The questions are embedded once, in one batch, and reused by every mode (the retriever's
query-embedding step is replaced by a lookup), so ms/query excludes the query embedding.

Stores are built under bench/out/home-retrieval (re-runs reuse them: ingestion is idempotent).
Writes bench/out/retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

OUT = Path(__file__).parent / "out"
TUTORIAL_TOP1 = {
    "all-MiniLM-L6-v2": 0.966,
    "pubmedbert-base-embeddings": 0.977,
    "gte-base": 0.988,
}


def metrics(ranked: list[list[str]], gold: list[str]) -> dict[str, float]:
    h1 = h5 = mrr = 0.0
    for docs, g in zip(ranked, gold, strict=True):
        if docs[:1] == [g]:
            h1 += 1
        if g in docs[:5]:
            h5 += 1
        if g in docs[:10]:
            mrr += 1.0 / (docs.index(g) + 1)
    n = len(gold)
    return {"hit@1": h1 / n, "hit@5": h5 / n, "mrr@10": mrr / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="../shared/data/pubmedqa/ori_pqal.json")
    ap.add_argument("--chunks", default="512:64,256:32,128:16", help="size:overlap,...")
    ap.add_argument("--rrf-k", default="10", help="RRF constants to try, comma-separated")
    ap.add_argument("--alpha", default="0.5", help="convex-fusion dense weights, comma-separated")
    ap.add_argument(
        "--bm25-fields",
        default="meshes,-",
        help="comma-separated variants of the metadata fields appended to the BM25 text, "
        "each '+'-joined (e.g. meshes or meshes+labels); '-' = none",
    )
    ap.add_argument(
        "--embed-backend",
        default="torch",
        choices=["torch", "onnx"],
        help="embedding backend for ingestion and queries (models.embed_backend)",
    )
    ap.add_argument(
        "--home", default=None, help="store home (default bench/out/home-retrieval[-onnx])"
    )
    ap.add_argument("--limit", type=int, default=None, help="first N questions/abstracts only")
    args = ap.parse_args()
    if args.home is None:
        suffix = "" if args.embed_backend == "torch" else f"-{args.embed_backend}"
        args.home = str(OUT / f"home-retrieval{suffix}")

    from medllm.config import Settings
    from medllm.models import load_embedding
    from medllm.pipelines.ingest import ingest_pubmedqa
    from medllm.pubmedqa import load
    from medllm.retrieval import Retriever

    recs = load(Path(args.source)).records[: args.limit]
    gold = [r.pmid for r in recs]
    questions = [r.question for r in recs]
    results = []
    embed = None
    qvecs: dict[str, np.ndarray] = {}
    field_sets = [[f for f in v.split("+") if f and f != "-"] for v in args.bm25_fields.split(",")]
    for spec in args.chunks.split(","):
        size, overlap = (int(x) for x in spec.split(":"))
        for fi, fields in enumerate(field_sets):
            s = Settings.load(
                config_file=False,
                paths={"home": args.home},
                models={"embed_backend": args.embed_backend},
                retrieval={
                    "chunk_size": size,
                    "chunk_overlap": overlap,
                    "top_k": 10,
                    "bm25_metadata_fields": fields,
                },
            )
            embed = embed or load_embedding(settings=s)
            if not qvecs:
                if args.embed_backend == "onnx":
                    raw = embed._embed(questions)  # type: ignore[attr-defined]
                else:
                    raw = embed._embed(questions, prompt_name="query")  # type: ignore[attr-defined]
                vs = np.asarray(raw, dtype=np.float32)
                vs /= np.maximum(np.linalg.norm(vs, axis=1, keepdims=True), 1e-12)
                qvecs = dict(zip(questions, vs, strict=True))
            coll = f"pqal-c{size}-o{overlap}"
            # re-ingesting is a no-op for the chunks; it rebuilds BM25 when the fields change
            summ = ingest_pubmedqa(
                s, args.source, collection=coll, embed_model=embed, limit=args.limit
            )
            print(
                f"[{coll}] {summ.documents_total} docs, {summ.chunks_total} chunks, "
                f"BM25 fields {fields or '-'}",
                flush=True,
            )
            r = Retriever.from_settings(s, coll, embed_model=embed)
            r._embed_query = qvecs.__getitem__  # type: ignore[method-assign,assignment]
            variants: list[tuple[str, dict[str, Any]]] = [("dense", {})] if fi == 0 else []
            variants += [("bm25", {})]
            variants += [
                ("hybrid", {"fusion": "convex", "hybrid_alpha": float(a)})
                for a in args.alpha.split(",")
            ]
            variants += [
                ("hybrid", {"fusion": "rrf", "rrf_k": int(k)}) for k in args.rrf_k.split(",")
            ]
            for mode, opts in variants:
                r.settings = s.with_overrides(retrieval=opts)
                t0 = time.perf_counter()
                ranked = [[d.doc_id for d in r.search(q, k=10, mode=mode)] for q in questions]
                secs = time.perf_counter() - t0
                m = metrics(ranked, gold)
                row = {
                    "chunk_size": size,
                    "chunk_overlap": overlap,
                    "chunks": summ.chunks_total,
                    "bm25_fields": "+".join(fields) if mode != "dense" else None,
                    "mode": mode,
                    **opts,
                    **{k: round(v, 4) for k, v in m.items()},
                    "ms_per_query": round(1000 * secs / len(questions), 1),
                }
                results.append(row)
                desc = " ".join(f"{k}={v}" for k, v in opts.items())
                print(
                    f"  {mode:7s} {desc:28s} hit@1={m['hit@1']:.3f} hit@5={m['hit@5']:.3f} "
                    f"mrr@10={m['mrr@10']:.3f} ({row['ms_per_query']} ms/q)",
                    flush=True,
                )
    best = max(results, key=lambda x: (x["hit@1"], x["mrr@10"]))
    tut = ", ".join(f"{k} {v}" for k, v in TUTORIAL_TOP1.items())
    print(f"\nsource tutorial top-1 (dense): {tut}")
    print(f"best here: {best}")
    OUT.mkdir(exist_ok=True)
    suffix = "" if args.embed_backend == "torch" else f"_{args.embed_backend}"
    (OUT / f"retrieval{suffix}.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "embed_backend": args.embed_backend,
                "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                "questions": len(questions),
                "tutorial_top1": TUTORIAL_TOP1,
                "results": results,
                "best": best,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
