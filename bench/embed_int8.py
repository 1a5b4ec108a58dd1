"""int8 ONNX vs fp32 embedding: throughput on 2,000 abstracts, retrieval quality on PQA-L, and
ingestion pipeline docs/s ÷ bare encoder docs/s — all measured in one run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/embed_int8.py [--n 2000] [--skip-quality]

Texts: all 1,000 PQA-L abstracts + all 792 NCBI-disease abstracts (title + text), then PQA-L
again from the start to reach --n (repeated texts cost the same to encode). Each encoder
encodes the same texts in batches of 64 (longest first): sentence-transformers (PyTorch fp32),
ONNX Runtime fp32 and ONNX Runtime int8 (``onnxruntime.quantization.quantize_dynamic``).

Quality: PQA-L (1,000 abstracts, chunks 512/64, BM25 text + MeSH) ingested once with the fp32
ONNX model and once with the int8 one (everything — documents and questions — through that
model); hit@1 / hit@5 of each of the 1,000 questions finding its own abstract, in dense, BM25
and hybrid mode.

Pipeline ratio: the --n texts as documents through ``ingest_documents`` (split → embed →
Chroma + docstore + BM25) with the int8 model, against the bare int8 encode of the same texts.

Writes bench/out/embed_int8.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
OUT = Path(__file__).parent / "out"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def texts_2000(n: int) -> tuple[list[str], list[str]]:
    """(ids, texts): PQA-L abstracts, NCBI-disease abstracts, then PQA-L again up to n."""
    from medllm.pipelines.readers import read_pubmedqa

    pqal = [(d.id_, d.text) for d in read_pubmedqa(SHARED / "pubmedqa" / "ori_pqal.json").documents]
    ncbi = []
    for line in (SHARED / "ncbi-disease" / "abstracts.jsonl").read_text().splitlines():
        r = json.loads(line)
        ncbi.append((f"ncbi-{r['pmid']}", f"{r['title']}\n{r['text']}"))
    items = pqal + ncbi
    i = 0
    while len(items) < n:
        pid, t = pqal[i % len(pqal)]
        items.append((f"{pid}-again-{i}", t))
        i += 1
    items = items[:n]
    return [x[0] for x in items], [x[1] for x in items]


def timed(fn: Any, *a: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, out


def hit_rates(settings: Any, embed: Any, home: Path) -> dict[str, dict[str, float]]:
    from medllm.pipelines.ingest import ingest_pubmedqa
    from medllm.pubmedqa import load
    from medllm.retrieval import Retriever

    src = SHARED / "pubmedqa" / "ori_pqal.json"
    s = settings.with_overrides(paths={"home": str(home)}, retrieval={"top_k": 10})
    ingest_pubmedqa(s, src, collection="pqal", embed_model=embed, show_progress=False)
    recs = load(src).records
    qv = np.asarray(embed._embed([r.question for r in recs]), dtype=np.float32)
    qvecs = dict(zip([r.question for r in recs], qv, strict=True))
    r = Retriever.from_settings(s, "pqal", embed_model=embed)
    r._embed_query = qvecs.__getitem__  # type: ignore[method-assign,assignment]
    out = {}
    for mode in ("dense", "bm25", "hybrid"):
        ranked = [[d.doc_id for d in r.search(x.question, k=10, mode=mode)] for x in recs]
        gold = [x.pmid for x in recs]
        out[mode] = {
            "hit@1": round(sum(d[:1] == [g] for d, g in zip(ranked, gold, strict=True)) / 1000, 4),
            "hit@5": round(sum(g in d[:5] for d, g in zip(ranked, gold, strict=True)) / 1000, 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--slice", type=int, default=256, help="texts per interleaved slice")
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    ap.add_argument(
        "--no-unfused",
        dest="unfused",
        action="store_false",
        help="leave out the unfused (before) fp32/int8 exports from the throughput run",
    )
    ap.add_argument(
        "--pipeline-batch",
        default="",
        help="documents per pipeline batch, comma-separated (default: ingest_documents' own)",
    )
    args = ap.parse_args()

    from llama_index.core import Document

    from medllm.config import Settings
    from medllm.models import load_embedding, resolve
    from medllm.models.onnx_embed import OnnxEmbedding
    from medllm.pipelines.ingest import ingest_documents

    base = OUT / "home-int8"
    shutil.rmtree(base, ignore_errors=True)
    s = Settings.load(
        config_file=False, paths={"home": str(base / "torch")}, models={"embed_backend": "torch"}
    )
    st_dir = resolve(s.models.embedding, s.paths.models_dir).path
    models_dir = Path(s.paths.models_dir)
    bs = s.retrieval.embed_batch_size
    ids, texts = texts_2000(args.n)
    st = load_embedding(settings=s)._model  # type: ignore[attr-defined]
    fp32 = OnnxEmbedding(st_dir, models_dir=models_dir, embed_batch_size=bs)
    int8 = OnnxEmbedding(st_dir, models_dir=models_dir, embed_batch_size=bs, quantize="int8")
    for e in (fp32, int8):
        e._embed(texts[:64])
    st.encode(texts[:64], batch_size=bs)

    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "texts": len(texts),
        "batch_size": bs,
    }
    if args.skip_throughput:
        texts_t: list[str] = []
    else:
        texts_t = texts
    # Interleaved: each slice of texts through each encoder in turn, so a machine whose load
    # changes during the run (shared cores) weighs on all of them alike.
    encoders: dict[str, Any] = {
        "onnx_fp32": fp32._embed,
        "onnx_int8": int8._embed,
        "sentence_transformers_fp32": lambda p: st.encode(
            p, batch_size=bs, normalize_embeddings=True
        ),
    }
    if args.unfused and texts_t:
        # the export before ONNX Runtime's fused operators (EXPORT_VERSION 1), for the record
        from medllm.models import onnx_embed

        real = onnx_embed.fuse_for_ort
        onnx_embed.fuse_for_ort = lambda *a, **k: False  # type: ignore[assignment]
        try:
            ud = base / "unfused-models"
            for name, q in (("onnx_fp32_unfused", None), ("onnx_int8_unfused", "int8")):
                e = OnnxEmbedding(st_dir, models_dir=ud, embed_batch_size=bs, quantize=q)
                e._embed(texts[:64])
                encoders[name] = e._embed
        finally:
            onnx_embed.fuse_for_ort = real  # type: ignore[assignment]
    t = dict.fromkeys(encoders, 0.0)
    vecs: dict[str, list[Any]] = {k: [] for k in encoders}
    step = args.slice
    for i in range(0, len(texts_t), step):
        part = texts_t[i : i + step]
        for name, fn in encoders.items():
            dt, v = timed(fn, part)
            t[name] += dt
            vecs[name] += list(v)
        print(f"  {i + len(part)} texts: " + ", ".join(f"{k} {x:.0f} s" for k, x in t.items()),
              flush=True)  # fmt: skip
    if texts_t:
        a, b = np.asarray(vecs["onnx_fp32"]), np.asarray(vecs["onnx_int8"])
        cos = (a * b).sum(1)
        res["docs_per_s"] = {k: round(len(texts) / x, 2) for k, x in t.items()}
        res["int8_speedup_vs_onnx_fp32"] = round(t["onnx_fp32"] / t["onnx_int8"], 3)
        res["int8_speedup_vs_sentence_transformers"] = round(
            t["sentence_transformers_fp32"] / t["onnx_int8"], 3
        )
        if "onnx_fp32_unfused" in t:
            res["int8_speedup_vs_unfused_onnx_fp32"] = round(
                t["onnx_fp32_unfused"] / t["onnx_int8"], 3
            )
            res["fused_fp32_speedup_vs_unfused_fp32"] = round(
                t["onnx_fp32_unfused"] / t["onnx_fp32"], 3
            )
            u = np.asarray(vecs["onnx_fp32_unfused"])
            res["max_abs_diff_fused_vs_unfused_fp32"] = float(np.abs(a - u).max())
        res["cosine_int8_vs_fp32"] = {
            "mean": round(float(cos.mean()), 4),
            "min": round(float(cos.min()), 4),
        }
        print(json.dumps(res, indent=1), flush=True)

    if not args.skip_pipeline:
        docs = [Document(id_=i, text=t) for i, t in zip(ids, texts, strict=True)]
        warm = Document(id_="warm", text=" ".join(texts[:4]))
        sw = s.with_overrides(paths={"home": str(base / "pipeline-warm")})
        ingest_documents(sw, [warm], collection="warm", embed_model=int8, show_progress=False)
        sizes = [int(x) for x in args.pipeline_batch.split(",") if x] or [0]
        # bare encodes bracket every pipeline run (the machine's speed drifts)
        t_bares = [timed(int8._embed, texts)[0]]
        for bs_docs in sizes:
            sp = s.with_overrides(paths={"home": str(base / f"pipeline-{bs_docs}")})
            kw = {"batch_size": bs_docs} if bs_docs else {}
            t_pipe, summ = timed(
                lambda sp=sp, kw=kw: ingest_documents(
                    sp, docs, embed_model=int8, show_progress=False, **kw
                )
            )
            t_bares.append(timed(int8._embed, texts)[0])
            t_bare = (t_bares[-2] + t_bares[-1]) / 2
            key = "pipeline_int8" + (f"_batch{bs_docs}" if bs_docs else "")
            res[key] = {
                "documents": len(docs),
                "documents_per_batch": bs_docs or "default",
                "chunks": summ.chunks_total,
                "pipeline_docs_per_s": round(len(docs) / t_pipe, 2),
                "bare_encode_docs_per_s": round(len(docs) / t_bare, 2),
                "ratio": round(t_bare / t_pipe, 3),
                "bare_s_before_after": [round(t_bares[-2], 1), round(t_bares[-1], 1)],
                "pipeline_s": round(t_pipe, 1),
            }
            print(json.dumps(res[key], indent=1), flush=True)

    if not args.skip_quality:
        res["pqal_fp32"] = hit_rates(s, fp32, base / "q-fp32")
        print("fp32", res["pqal_fp32"], flush=True)
        res["pqal_int8"] = hit_rates(s, int8, base / "q-int8")
        print("int8", res["pqal_int8"], flush=True)
        res["hybrid_hit1_delta_points"] = round(
            100 * (res["pqal_int8"]["hybrid"]["hit@1"] - res["pqal_fp32"]["hybrid"]["hit@1"]), 2
        )
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(res, indent=1))
    OUT.mkdir(exist_ok=True)
    (OUT / f"embed_int8{args.tag}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
