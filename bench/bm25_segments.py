"""BM25 in segments vs the single bm25s index of before, on the same documents, same run.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/bm25_segments.py \\
        --store bench/out/home-scale/stores/synthetic1000000__all-minilm-l6-v2

``--store``: a store directory with a SQLite docstore (``bench/scale.py`` builds one; its
documents are indexed with the MeSH field, as there). Every step runs in a fresh process (its
peak RSS is its own), on copies under ``--work`` (the store is not changed):

1. **full build**: the index of before (``store.build_bm25`` of commit b18293c, kept below as
   ``legacy_build``: every document's text and tokens held at once, one bm25s index) vs the
   segmented build (``medllm.storage.bm25.build``, a segment of ``SEGMENT_DOCS`` at a time):
   seconds and peak RSS;
2. **an update** like a PubMed daily update file (``--add`` new documents, ``--change``
   changed, ``--delete`` deleted, in a copy of the docstore): the index of before is rebuilt
   whole; the segmented one indexes the new and changed documents and marks the others dead;
3. **queries**: the BM25 scores of every document for ``--queries`` PQA-L questions (the
   scoring ``Retriever`` does, plus the top 10), p50 / p95 ms and the query process's peak RSS,
   for both indexes after the update; the top 10 (ids and scores) must be equal.

Writes bench/out/bm25_segments.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
PQAL = ROOT.parent / "shared" / "data" / "pubmedqa" / "ori_pqal.json"
FIELDS = ["meshes"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class _Ref:
    def __init__(self, d: Path) -> None:
        self.dir = d


def legacy_build(path: Path, docstore: Any, metadata_fields: list[str]) -> int:
    """``store.build_bm25`` as of commit b18293c: one bm25s index over every document (all
    texts and their tokens in memory at once), saved without a corpus, with the side files."""
    import bm25s
    import Stemmer
    from llama_index.retrievers.bm25 import BM25Retriever

    from medllm.storage import bm25, store

    texts: list[str] = []
    columns: list[tuple[str, dict[str, Any]]] = []
    for d in store.iter_documents(docstore):
        texts.append(bm25.text(d, metadata_fields))
        columns.append((d.id_, d.metadata or {}))
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    stemmer = Stemmer.Stemmer("english")
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer,
                            token_pattern=bm25.TOKEN_PATTERN, show_progress=False)  # fmt: skip
    index = bm25s.BM25()
    index.index(tokens, show_progress=False)
    del tokens, texts
    retriever = BM25Retriever(existing_bm25=index, stemmer=stemmer,
                              token_pattern=bm25.TOKEN_PATTERN, similarity_top_k=1)  # fmt: skip
    retriever.corpus = None
    retriever.persist(str(path), show_progress=False)
    bm25.write_columns(path, columns)
    (path / "medllm.json").write_text(json.dumps({"docs": len(columns)}))
    return len(columns)


def step(argv: list[str]) -> dict[str, Any]:
    """Run one step in a fresh process; its RESULT line."""
    out = subprocess.run(
        [sys.executable, __file__, "--step", *argv], capture_output=True, text=True
    )
    if out.returncode:
        sys.exit(f"step {argv} failed:\n{out.stderr[-3000:]}")
    res = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
    print(f"  {' '.join(argv[:2])}: {res}", flush=True)
    return dict(res)


def run_step(kind: str, store_dir: Path, index: Path, args: argparse.Namespace) -> dict[str, Any]:
    from medllm.storage import bm25, store

    ref = _Ref(store_dir)
    if kind in ("build-legacy", "build-segments", "update-segments", "update-legacy"):
        ds = store.load_docstore(ref, write=False)  # type: ignore[arg-type]
        t = time.perf_counter()
        if kind.endswith("legacy"):
            legacy_build(index, ds, FIELDS)
            did: dict[str, Any] = {}
        elif kind == "build-segments":
            shutil.rmtree(index, ignore_errors=True)
            bm25.build(index, ds, FIELDS, "bench")
            did = {}
        else:
            did = bm25.update(index, ds, FIELDS, "bench-2")
        return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": rss_mb(), **did}
    if kind == "query":
        import numpy as np

        from medllm.pubmedqa import load

        qs = [r.question for r in load(PQAL).records][: args.queries]
        t = time.perf_counter()
        idx: Any = bm25.open_index(index) if bm25.is_segmented(index) else store.LegacyBm25(index)
        ids = idx.ids
        opened = time.perf_counter() - t
        times, tops = [], []
        for q in qs:
            t = time.perf_counter()
            s = idx.scores(bm25.query_tokens(q, idx.stemmer))
            top = np.argpartition(-s, 19)[:20]
            times.append(1000 * (time.perf_counter() - t))
            ranked = sorted((-float(s[i]), ids[int(i)]) for i in top)[:10]
            tops.append([[i, -v] for v, i in ranked])
        times.sort()
        (Path(args.work) / f"tops-{index.name}.json").write_text(json.dumps(tops))
        return {
            "open_s": round(opened, 2),
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
            "peak_rss_mb": rss_mb(),
        }
    raise SystemExit(f"unknown step {kind}")


def change_docstore(store_dir: Path, args: argparse.Namespace) -> dict[str, int]:
    """Add, change and delete documents in the (copied) docstore, as an update file would."""
    from medllm.pipelines.readers import make_document
    from medllm.storage import store

    ref = _Ref(store_dir)
    ds = store.load_docstore(ref, write=True)  # type: ignore[arg-type]
    some = []
    for d in store.iter_documents(ds):
        some.append(d)
        if len(some) >= args.change + args.delete:
            break
    new = [
        make_document(f"u{i}", f"{some[i % len(some)].text} update {i}", {"year": 2026})
        for i in range(args.add)
    ]
    changed = [
        make_document(d.id_, d.text + " Erratum.", dict(d.metadata)) for d in some[: args.change]
    ]
    ds.set_document_hashes({d.id_: d.hash for d in new + changed})
    ds.add_documents(new + changed, allow_update=True)
    for d in some[args.change :]:
        ds.delete_document(d.id_)
    store.save_docstore(ref, ds)  # type: ignore[arg-type]
    store.close_docstore(ds)
    return {"added": len(new), "changed": len(changed), "deleted": len(some) - args.change}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=False)
    ap.add_argument("--work", default="/tmp/bm25_segments")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--add", type=int, default=5000)
    ap.add_argument("--change", type=int, default=1000)
    ap.add_argument("--delete", type=int, default=1000)
    ap.add_argument("--step", nargs=3, metavar=("KIND", "STORE_DIR", "INDEX"), default=None)
    args = ap.parse_args()
    if args.step:
        kind, d, index = args.step
        print("RESULT " + json.dumps(run_step(kind, Path(d), Path(index), args)))
        return
    if not args.store:
        ap.error("--store is required")
    from medllm.storage import store

    src = Path(args.store)
    if not (src / store.DOCSTORE).is_file():
        sys.exit(f"{src} has no SQLite docstore (bench/scale.py --rebuild-bm25 makes one)")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(src / store.DOCSTORE, work / store.DOCSTORE)
    common = ["--work", str(work), "--queries", str(args.queries)]
    leg, seg = work / "legacy", work / "segments"
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        "documents": store.docstore_count(store.load_docstore(_Ref(work))),  # type: ignore[arg-type]
    }
    print(f"{res['documents']:,} documents", flush=True)
    res["build"] = {
        "legacy": step(["build-legacy", str(work), str(leg), *common]),
        "segments": step(["build-segments", str(work), str(seg), *common]),
    }
    res["update_docs"] = change_docstore(work, args)
    res["update"] = {
        "legacy_rebuild": step(["update-legacy", str(work), str(leg), *common]),
        "segments": step(["update-segments", str(work), str(seg), *common]),
    }
    res["query"] = {
        "legacy": step(["query", str(work), str(leg), *common]),
        "segments": step(["query", str(work), str(seg), *common]),
    }
    a = json.loads((work / "tops-legacy.json").read_text())
    b = json.loads((work / "tops-segments.json").read_text())
    res["top10_equal"] = f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"
    res["disk_mb"] = {
        k: round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6, 1)
        for k, p in (("legacy", leg), ("segments", seg))
    }
    b_, u_, q_ = res["build"], res["update"], res["query"]
    res["ratios_segments_over_legacy"] = {
        "build_s": round(b_["segments"]["seconds"] / b_["legacy"]["seconds"], 3),
        "build_peak_rss": round(b_["segments"]["peak_rss_mb"] / b_["legacy"]["peak_rss_mb"], 3),
        "update_s": round(u_["segments"]["seconds"] / u_["legacy_rebuild"]["seconds"], 4),
        "query_p50": round(q_["segments"]["p50_ms"] / q_["legacy"]["p50_ms"], 3),
        "query_peak_rss": round(q_["segments"]["peak_rss_mb"] / q_["legacy"]["peak_rss_mb"], 3),
    }
    res["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(res, indent=1))
    OUT.mkdir(exist_ok=True)
    (OUT / "bm25_segments.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
