"""Offline screen of retrieval choices on PQA-L (question → its own abstract among the 1,000).

Embeds each variant once (cached as .npy under --cache), then scores every question against
every abstract in numpy, so many choices can be compared in seconds: chunk size, chunk-score
aggregation (max / top-2 / mean), MeSH terms in the BM25 text or in the embedded text, query
prefixes, BM25 parameters, and fusion (RRF, convex with min-max or z-normalisation). The
winners are then measured through the real store with bench/retrieval.py.

    OMP_NUM_THREADS=1 .venv/bin/python bench/retrieval_screen.py

Dense document score = aggregate of its chunks' cosines; fusion candidates = top 50 documents
of each retriever; ties are broken by PMID as in medllm.retrieval. Writes
bench/out/retrieval_screen.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OUT = Path(__file__).parent / "out"
Arr = np.ndarray


def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="../shared/data/pubmedqa/ori_pqal.json")
    ap.add_argument("--cache", default=str(OUT / "retrieval-screen"))
    args = ap.parse_args()

    import bm25s
    import Stemmer
    from llama_index.core.schema import MetadataMode

    from medllm.config import Settings
    from medllm.models import load_embedding
    from medllm.pipelines import readers
    from medllm.pipelines.ingest import _splitter
    from medllm.pubmedqa import load

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    src = Path(args.source)
    recs = load(src).records
    docs = readers.read_pubmedqa(src).documents
    pmids = [d.id_ for d in docs]
    pix = {p: i for i, p in enumerate(pmids)}
    n = len(pmids)
    gold = np.array([pix[r.pmid] for r in recs])
    pm = np.array([int(p) for p in pmids])
    meshes = {r.pmid: "; ".join(r.meshes) for r in recs}
    emb: Any = None

    def encode(name: str, texts: list[str], owners: list[str]) -> tuple[Arr, Arr]:
        nonlocal emb
        f = cache / f"{name}.npy"
        if not f.exists():
            emb = emb or load_embedding(settings=Settings.load(config_file=False))
            t0 = time.perf_counter()
            e = emb._model.encode(texts, batch_size=32, normalize_embeddings=True)
            print(f"  embedded {name}: {len(texts)} texts, {time.perf_counter() - t0:.0f} s")
            np.save(f, np.asarray(e, dtype=np.float32))
            (cache / f"{name}.json").write_text(json.dumps({"doc": owners}))
        owners = json.loads((cache / f"{name}.json").read_text())["doc"]
        return np.load(f), np.array([pix[d] for d in owners])

    def chunks(size: int, overlap: int) -> tuple[Arr, Arr]:
        nonlocal emb
        name = f"pqal-c{size}-o{overlap}"
        if not (cache / f"{name}.npy").exists():
            emb = emb or load_embedding(settings=Settings.load(config_file=False))
            nodes = _splitter(emb, size, overlap).get_nodes_from_documents(docs)
            texts = [nd.get_content(metadata_mode=MetadataMode.EMBED) for nd in nodes]
            return encode(name, texts, [str(nd.ref_doc_id) for nd in nodes])
        return encode(name, [], [])

    def queries(prefix: str = "") -> Arr:
        tag = "".join(c for c in prefix if c.isalnum())
        e, idx = encode(f"q_{tag or 'plain'}", [prefix + r.question for r in recs], pmids)
        return e[np.argsort(idx)]

    def dense(vecs: tuple[Arr, Arr], q: Arr, agg: str = "max") -> Arr:
        e, idx = vecs
        s = q @ e.T
        out = np.empty((n, n), dtype=np.float32)
        for j in range(n):
            c = np.sort(s[:, idx == j], axis=1)[:, ::-1]
            if agg == "max":
                out[:, j] = c[:, 0]
            elif agg == "top2mean":
                out[:, j] = c[:, :2].mean(1)
            else:
                out[:, j] = c.mean(1)
        return out

    def bm25(fields: bool, stem: bool = True, **params: Any) -> Arr:
        texts = [d.text + ("\n" + meshes[d.id_] if fields else "") for d in docs]
        stemmer = Stemmer.Stemmer("english") if stem else None
        model = bm25s.BM25(**params)
        toks = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
        model.index(toks, show_progress=False)
        out = np.zeros((n, n), dtype=np.float32)
        for i, r in enumerate(recs):
            toks = bm25s.tokenize(
                r.question, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
            )[0]
            ids = model.get_tokens_ids(toks)
            if ids:
                out[i] = model.get_scores_from_ids(ids)
        return out

    def metrics(m: Arr) -> dict[str, float]:
        g = m[np.arange(n), gold][:, None]
        rank = (m > g).sum(1) + ((m == g) & (pm[None, :] < pm[gold][:, None])).sum(1) + 1
        return {
            "hit@1": float((rank == 1).mean()),
            "hit@5": float((rank <= 5).mean()),
            "mrr@10": float(np.where(rank <= 10, 1.0 / rank, 0.0).mean()),
        }

    def top(m: Arr, k: int = 50) -> Arr:
        mask = np.zeros(m.shape, dtype=bool)
        np.put_along_axis(mask, np.argpartition(-m, k, axis=1)[:, :k], True, 1)
        return mask

    def rrf(d: Arr, b: Arr, k: int = 10) -> Arr:
        rd = np.argsort(np.argsort(-d, 1), 1) + 1
        rb = np.argsort(np.argsort(-b, 1), 1) + 1
        return np.where(rd <= 50, 1 / (k + rd), 0) + np.where((rb <= 50) & (b > 0), 1 / (k + rb), 0)

    def convex(d: Arr, b: Arr, alpha: float = 0.5, how: str = "minmax", floor: bool = True) -> Arr:
        md, mb = top(d), top(b)
        if floor:  # as medllm.retrieval: BM25-only candidates get the lowest dense candidate score
            d = np.where(md, d, np.where(md, d, np.inf).min(1, keepdims=True))
        mask = md | mb

        def norm(x: Arr) -> Arr:
            xs = np.where(mask, x, np.nan)
            if how == "z":
                mu, sd = np.nanmean(xs, 1, keepdims=True), np.nanstd(xs, 1, keepdims=True)
                return (x - mu) / np.maximum(sd, 1e-9)
            lo, hi = np.nanmin(xs, 1, keepdims=True), np.nanmax(xs, 1, keepdims=True)
            return (x - lo) / np.maximum(hi - lo, 1e-9)

        return np.where(mask, alpha * norm(d) + (1 - alpha) * norm(b), -np.inf)

    rows: list[dict[str, Any]] = []

    def report(name: str, m: Arr) -> None:
        r = metrics(m)
        rows.append({"variant": name, **{k: round(v, 4) for k, v in r.items()}})
        print(f"{name:62s} " + " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)

    q = queries()
    c512 = chunks(512, 64)
    d512 = dense(c512, q)
    b_plain, b_mesh = bm25(False), bm25(True)
    report("dense, chunks 512/64, max", d512)
    for size, ov in ((256, 32), (128, 32)):
        c = chunks(size, ov)
        for agg in ("max", "top2mean", "mean"):
            report(f"dense, chunks {size}/{ov}, {agg}", dense(c, q, agg))
    d256, d128 = dense(chunks(256, 32), q), dense(chunks(128, 32), q)
    report("dense, sum of max over 512/64 and 256/32 chunks", d512 + d256)
    mesh_doc = encode(
        "meshdoc", [f"{meshes[d.id_]}\n{d.text}" for d in docs], [d.id_ for d in docs]
    )
    report("dense, one vector per abstract with its MeSH line first", dense(mesh_doc, q))
    mesh_only = encode("mesh", [meshes[d.id_] for d in docs], [d.id_ for d in docs])
    report("dense, MeSH-only vector", dense(mesh_only, q))
    report("dense 512 + 0.2 x MeSH-only vector", d512 + 0.2 * dense(mesh_only, q))
    for prefix in ("Question: ", "query: "):
        report(f"dense 512, query prefix {prefix!r}", dense(c512, queries(prefix)))
    report("bm25, text (stemmed, stopwords)", b_plain)
    report("bm25, text + MeSH", b_mesh)
    report("bm25, text + MeSH, no stemming", bm25(True, stem=False))
    report("bm25, text + MeSH, k1=1.2", bm25(True, k1=1.2))
    report("bm25, text + MeSH, bm25+", bm25(True, method="bm25+"))
    fusions: list[tuple[str, Callable[[Arr, Arr], Arr]]] = [
        ("rrf k=10", lambda d, b: rrf(d, b, 10)),
        ("rrf k=60", lambda d, b: rrf(d, b, 60)),
    ]
    for a in (0.3, 0.4, 0.5, 0.6, 0.7):
        fusions.append((f"convex min-max a={a}", partial(convex, alpha=a)))
    fusions.append(("convex min-max a=0.5, exact dense", lambda d, b: convex(d, b, floor=False)))
    fusions.append(("convex z-score a=0.5", lambda d, b: convex(d, b, how="z")))
    for bn, b in (("text", b_plain), ("text+MeSH", b_mesh)):
        for dn, d in (("512/64", d512), ("256/32", d256), ("128/32", d128)):
            for fn, f in fusions:
                if dn != "512/64" and fn not in ("rrf k=10", "convex min-max a=0.5"):
                    continue
                report(f"hybrid {fn}, dense {dn}, bm25 {bn}", f(d, b))
    OUT.mkdir(exist_ok=True)
    (OUT / "retrieval_screen.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "questions": n, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
