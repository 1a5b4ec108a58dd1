"""Ingestion throughput: PQA-L through the full pipeline vs a bare SentenceTransformer.encode.

    .venv/bin/python bench/ingest.py [--limit 300] [--embed-backend torch|onnx]

Both measured in the same run over the same document texts: the pipeline (read → split →
embed → Chroma + docstore + BM25) into a fresh store, then ``SentenceTransformer.encode`` of
the texts with the same batch size. Prints docs/s for each, their ratio (target ≥ 0.85) and
the peak RSS. Writes bench/out/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="../shared/data/pubmedqa/ori_pqal.json")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument(
        "--embed-backend",
        default="torch",
        choices=["torch", "onnx"],
        help="the pipeline's embedding backend (models.embed_backend); with onnx the bare "
        "reference is the same ONNX session, and a bare sentence-transformers encode is "
        "measured too for the speed-up",
    )
    args = ap.parse_args()

    from medllm.config import Settings
    from medllm.models import load_embedding
    from medllm.pipelines.ingest import ingest_documents
    from medllm.pipelines.readers import read_pubmedqa

    home = OUT / "home-ingest"
    shutil.rmtree(home, ignore_errors=True)
    s = Settings.load(
        config_file=False, paths={"home": home}, models={"embed_backend": args.embed_backend}
    )
    docs = read_pubmedqa(Path(args.source)).documents[: args.limit]
    embed = load_embedding(settings=s)
    embed.get_text_embedding("warm up")
    # One-off process costs (importing chromadb, bm25s, the LlamaIndex pipeline; opening the
    # Chroma client) are paid once per process, not per document: pay them here, on a
    # separate collection, so the ratio measures ingestion throughput.
    # The warm-up document is long enough to be split (loads the sentence tokenizer too).
    from llama_index.core import Document

    long = Document(text=" ".join(d.text for d in docs[:4]), id_="warmup-long")
    ingest_documents(s, [long], collection="warmup", embed_model=embed, show_progress=False)

    t0 = time.perf_counter()
    summ = ingest_documents(s, docs, embed_model=embed, show_progress=False)
    pipe_s = time.perf_counter() - t0

    texts = [d.text for d in docs]
    if args.embed_backend == "onnx":
        t0 = time.perf_counter()
        embed._embed(texts)  # type: ignore[attr-defined]  # the same ONNX session, batched
        bare_s = time.perf_counter() - t0
        torch_embed = load_embedding(settings=s.with_overrides(models={"embed_backend": "torch"}))
        st = torch_embed._model  # type: ignore[attr-defined]
    else:
        st = embed._model  # type: ignore[attr-defined]  # inside HuggingFaceEmbedding
    t0 = time.perf_counter()
    st.encode(texts, batch_size=s.retrieval.embed_batch_size, normalize_embeddings=True)
    st_s = time.perf_counter() - t0
    if args.embed_backend == "torch":
        bare_s = st_s

    n = len(docs)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "documents": n,
        "chunks": summ.chunks_total,
        "pipeline_docs_per_s": round(n / pipe_s, 2),
        "bare_encode_docs_per_s": round(n / bare_s, 2),
        "ratio": round(bare_s / pipe_s, 3),
        "embed_backend": args.embed_backend,
        "bare_sentence_transformers_docs_per_s": round(n / st_s, 2),
        "bare_speedup_vs_sentence_transformers": round(st_s / bare_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(res, indent=1))
    OUT.mkdir(exist_ok=True)
    suffix = "" if args.embed_backend == "torch" else f"_{args.embed_backend}"
    (OUT / f"ingest{suffix}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
