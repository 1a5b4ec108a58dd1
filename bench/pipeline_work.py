"""The work the ingestion pipeline does beyond the bare encoder, measured on ONE core.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python \
        bench/pipeline_work.py [--rounds 2]

Issue 15's ratio (pipeline docs/s ÷ bare encoder docs/s, ``bench/embed_int8.py``) is measured
on two cores that the encoder alone keeps busy (1.98-1.99 cores). On two cores wall time is at
least half the CPU work, so the two-core ratio cannot beat the ratio of the *work* each does.
This script measures that work ratio: the process is pinned to one core
(``os.sched_setaffinity``) and ONNX Runtime runs one thread, so every thread of the pipeline
(the splitter thread, Chroma's writer thread and its Rust threads) takes its CPU from the same
core and wall time is the work. Per round: a bare int8 encode of the texts of
``bench/embed_int8.py`` (2,000 abstracts), then ``ingest_documents`` of them into a fresh
store, CPU time per part (``time.thread_time`` in each part's own thread; Chroma's Rust
threads are in "other threads").

Also measured once: the bare encode of the pipeline's chunk texts (2,049 chunks: long abstracts
are split in two) against the bare encode of the 2,000 texts, and Chroma's insert of those
chunks alone — the work no pipeline can skip.

Writes bench/out/pipeline_work.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
OUT = Path(__file__).parent / "out"
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--core", type=int, default=0, help="the CPU to pin the process to")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})

    from embed_int8 import texts_2000
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline

    from medllm.config import Settings
    from medllm.models import resolve
    from medllm.models.onnx_embed import OnnxEmbedding
    from medllm.pipelines import ingest as ing
    from medllm.storage import kvstore
    from medllm.storage import store as st

    base = OUT / "home-pipeline-work"
    shutil.rmtree(base, ignore_errors=True)
    s = Settings.load(config_file=False, paths={"home": str(base / "h")})
    r = s.retrieval
    st_dir = resolve(s.models.embedding, s.paths.models_dir).path
    enc = OnnxEmbedding(
        st_dir,
        models_dir=s.paths.models_dir,
        embed_batch_size=r.embed_batch_size,
        quantize="int8",
        threads=1,
    )
    ids, texts = texts_2000(args.n)
    docs = [Document(id_=i, text=t) for i, t in zip(ids, texts, strict=True)]
    enc._embed(texts[:64])
    warm = [Document(id_="warm", text=" ".join(texts[:4]))]
    sw = s.with_overrides(paths={"home": str(base / "warm")})
    ing.ingest_documents(sw, warm, embed_model=enc, show_progress=False)

    def bare(xs: list[str]) -> tuple[float, Any]:
        enc._known_ids = None  # tokenised afresh, as a bare encode is
        t0 = time.perf_counter()
        v = enc._embed(xs)
        return time.perf_counter() - t0, v

    # -- the work no pipeline can skip: every chunk encoded, every chunk's vector inserted
    split = IngestionPipeline(
        transformations=[ing._splitter(enc, r.chunk_size, r.chunk_overlap)], disable_cache=True
    )
    nodes = split.run(documents=docs)
    chunks = [n.get_content() for n in nodes]
    t_texts, _ = bare(texts)
    t_chunks, vecs = bare(chunks)
    t_texts2, _ = bare(texts)
    import chromadb

    client = chromadb.PersistentClient(
        str(base / "chroma-only"), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    coll = client.get_or_create_collection("chunks", metadata={"hnsw:space": "cosine"})
    c0 = time.process_time()
    for i in range(0, len(chunks), 256):
        part = nodes[i : i + 256]
        coll.add(
            ids=[n.node_id for n in part],
            embeddings=vecs[i : i + 256],
            documents=chunks[i : i + 256],
            metadatas=[{"document_id": n.ref_doc_id} for n in part],
        )
    t_chroma = time.process_time() - c0
    floor = {
        "texts": len(texts),
        "chunks": len(chunks),
        "bare_texts_s": [round(t_texts, 1), round(t_texts2, 1)],
        "bare_chunks_s": round(t_chunks, 1),
        "chroma_insert_cpu_s": round(t_chroma, 2),
        "work_ratio_ceiling": round(((t_texts + t_texts2) / 2) / (t_chunks + t_chroma), 3),
    }
    print(json.dumps(floor), flush=True)

    # -- the pipeline, part by part
    cpu: collections.defaultdict[str, float] = collections.defaultdict(float)
    depth = threading.local()

    def wrap(obj: Any, name: str, key: str) -> None:
        f = getattr(obj, name)

        def g(*a: Any, **k: Any) -> Any:
            d = getattr(depth, key, 0)
            setattr(depth, key, d + 1)
            t = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                setattr(depth, key, d)
                if d == 0:
                    cpu[key] += time.thread_time() - t

        setattr(obj, name, g)

    wrap(OnnxEmbedding, "_embed", "encode")
    wrap(ing.StoreWriter, "_split_now", "split")
    wrap(ing.StoreWriter, "_store_chunks", "chroma (its Python thread)")
    wrap(st, "build_bm25", "bm25")
    for cls in [c for c in vars(kvstore).values() if isinstance(c, type)]:
        for m in ("set_document_hashes", "add_documents"):
            if m in vars(cls):
                wrap(cls, m, "docstore")
    rounds: list[dict[str, Any]] = []
    for k in range(args.rounds):
        t_bare, _ = bare(texts)
        cpu.clear()
        c0, w0 = time.process_time(), time.perf_counter()
        sp = s.with_overrides(paths={"home": str(base / f"p{k}")})
        summ = ing.ingest_documents(sp, docs, embed_model=enc, show_progress=False)
        t_pipe, c_pipe = time.perf_counter() - w0, time.process_time() - c0
        parts = {key: round(v, 2) for key, v in sorted(cpu.items(), key=lambda kv: -kv[1])}
        parts["other threads and glue"] = round(c_pipe - sum(cpu.values()), 2)
        row = {
            "bare_s": round(t_bare, 1),
            "pipeline_s": round(t_pipe, 1),
            "pipeline_cpu_s": round(c_pipe, 1),
            "chunks": summ.chunks_total,
            "one_core_ratio": round(t_bare / t_pipe, 3),
            "pipeline_cpu_by_part_s": parts,
        }
        rounds.append(row)
        print(json.dumps(row), flush=True)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cpu, pinned to {args.core}, load {os.getloadavg()[0]:.1f}",
        "floor": floor,
        "rounds": rounds,
        "mean_one_core_ratio": round(sum(x["one_core_ratio"] for x in rounds) / len(rounds), 3),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "pipeline_work.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
