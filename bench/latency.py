"""Query latency p50/p95 per mode at 1,000 PQA-L abstracts and at a 100,000-chunk collection.

    OMP_NUM_THREADS=1 .venv/bin/python bench/latency.py --queries 200

The 1,000-abstract store is the one bench/retrieval.py builds (chunk 512/64). The 100k-chunk
collection is synthetic (random medical-word text, random unit vectors: latency, not quality),
built once under bench/out/home-latency. Query embedding time is included, for each query
embedding backend (torch = sentence-transformers, onnx = ONNX Runtime; same vectors). Writes
bench/out/latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
OUT = Path(__file__).parent / "out"
WORDS = [
    "patient",
    "cancer",
    "therapy",
    "risk",
    "trial",
    "cohort",
    "outcome",
    "mortality",
    "diabetes",
    "insulin",
    "cardiac",
    "stroke",
    "infection",
    "sepsis",
    "antibiotic",
    "surgery",
    "laparoscopic",
    "pediatric",
    "elderly",
    "pregnancy",
    "screening",
    "biomarker",
    "gene",
    "expression",
    "mitochondria",
    "apoptosis",
    "inflammation",
    "cytokine",
    "vaccine",
    "dose",
    "renal",
    "hepatic",
    "pulmonary",
    "asthma",
    "imaging",
    "ultrasound",
    "randomized",
    "placebo",
    "survival",
    "relapse",
]


def build_synthetic(home: Path, n_chunks: int, per_doc: int = 4) -> str:
    import numpy as np
    from llama_index.core.storage.docstore import SimpleDocumentStore

    from medllm.config import Settings
    from medllm.pipelines.readers import make_document
    from medllm.storage import store

    s = Settings.load(config_file=False, paths={"home": home})
    ref = store.StoreRef.from_settings(s, f"synthetic{n_chunks}")
    if ref.exists():
        return ref.collection
    rng = random.Random(0)
    nrng = np.random.default_rng(0)
    coll = store.get_collection(ref, create=True)
    ds = SimpleDocumentStore()
    n_docs = n_chunks // per_doc
    batch_ids, batch_txt, batch_meta = [], [], []
    for d in range(n_docs):
        doc_id = f"s{d}"
        chunks = [" ".join(rng.choices(WORDS, k=60)) for _ in range(per_doc)]
        year = 1990 + d % 30
        ds.add_documents([make_document(doc_id, "\n".join(chunks), {"year": year})])
        for i, t in enumerate(chunks):
            batch_ids.append(f"{doc_id}#{i}")
            batch_txt.append(t)
            batch_meta.append({"document_id": doc_id, "year": year})
        if len(batch_ids) >= 4000 or d == n_docs - 1:
            e = nrng.standard_normal((len(batch_ids), 384)).astype("float32")
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            coll.add(ids=batch_ids, embeddings=e, documents=batch_txt, metadatas=batch_meta)
            batch_ids, batch_txt, batch_meta = [], [], []
            print(f"  synthetic: {coll.count()} chunks", flush=True)
    store.build_bm25(ref, ds)
    store.write_json_atomic(
        ref.dir / store.MANIFEST,
        {
            "collection": ref.collection,
            "embedding": ref.embedding,
            "documents": n_docs,
            "chunks": coll.count(),
            "chunk_size": 512,
            "chunk_overlap": 64,
            "chroma": "embedded",
        },
    )
    return ref.collection


def measure(
    home: Path, collection: str, queries: list[str], embed_backend: str
) -> dict[str, dict[str, float]]:
    from medllm.config import Settings
    from medllm.retrieval import Retriever

    s = Settings.load(
        config_file=False, paths={"home": home}, models={"embed_backend": embed_backend}
    )
    r = Retriever.from_settings(s, collection)
    r.search(queries[0], mode="hybrid")  # warm up: model, BM25 load
    out = {}
    for mode in ("dense", "bm25", "hybrid"):
        times = []
        for q in queries:
            t0 = time.perf_counter()
            r.search(q, k=5, mode=mode)
            times.append(1000 * (time.perf_counter() - t0))
        times.sort()
        out[mode] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
        }
        print(
            f"  {collection:24s} {mode:7s} p50={out[mode]['p50_ms']} ms "
            f"p95={out[mode]['p95_ms']} ms",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--source", default="../shared/data/pubmedqa/ori_pqal.json")
    ap.add_argument(
        "--embed-backends",
        default="torch,onnx",
        help="query-embedding backends to measure (models.embed_backend), comma-separated",
    )
    args = ap.parse_args()
    from medllm.pubmedqa import load

    qs = [r.question for r in load(Path(args.source)).records][: args.queries]
    res: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    coll = build_synthetic(OUT / "home-latency", args.chunks)
    for backend in args.embed_backends.split(","):
        print(f"query embedding backend: {backend}", flush=True)
        res[backend] = {
            "pqal_1000": measure(OUT / "home-retrieval", "pqal-c512-o64", qs, backend),
            f"synthetic_{args.chunks}": measure(OUT / "home-latency", coll, qs, backend),
        }
    OUT.mkdir(exist_ok=True)
    (OUT / "latency.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                "queries": len(qs),
                "results": res,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
