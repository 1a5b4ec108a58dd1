"""Store at scale: a synthetic N-chunk store (default 1,000,000), query latency per mode with
and without a metadata filter, sizes on disk, and the peak RSS of a query process.

    OMP_NUM_THREADS=2 .venv/bin/python bench/scale.py --chunks 1000000 --queries 200

Build (once; re-runs reuse it): one chunk per document (a PubMed abstract is one 512-token
chunk), random unit vectors (latency, not quality), text of 200 words drawn from the word
frequencies of the PQA-L abstracts (so real questions hit realistic posting lists), a year,
publication types and MeSH terms. Chroma gets the chunks (with the filter flags of
``medllm.storage.filters``) in batches; the BM25 index is built by the real
``store.build_bm25`` from a docstore of the same documents.

Query (a fresh subprocess, so its peak RSS is the query process's own): ``Retriever.search``
for PQA-L questions, query embedding included (ONNX MiniLM), k = 5, dense / BM25 / hybrid,
and hybrid with ``--where year>=2010,pubtype=Review``. Writes bench/out/scale_<N>.json.

``--chroma-server PORT``: the same queries against the built store served by ``chroma run``
(started and stopped here), with the server's peak RSS beside the query process's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
OUT = Path(__file__).parent / "out"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PQAL = SHARED / "pubmedqa" / "ori_pqal.json"
WHERE = "year>=2010,pubtype=Review"


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rss_mb(pid: int | str = "self") -> float:
    """Peak RSS of a process image (this one by default): VmHWM (reset by exec, unlike
    ru_maxrss, which a subprocess inherits from the parent it was forked from)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def build(
    home: Path, n: int, words: int = 200, batch: int = 5000, chroma: bool = True
) -> dict[str, Any]:
    """Build the synthetic store (once). ``chroma=False``: only its docstore again (the same
    documents: the same random draws, vectors included, in the same order) and the BM25 index,
    for a store whose Chroma collection exists but whose docstore was not kept (built before
    the docstore was a file)."""
    import numpy as np

    from medllm.config import Settings
    from medllm.pipelines.readers import make_document
    from medllm.pubmedqa import load
    from medllm.storage import filters, store

    s = Settings.load(config_file=False, paths={"home": str(home)})
    ref = store.StoreRef.from_settings(s, f"synthetic{n}")
    if ref.exists() and chroma:
        return json.loads((ref.dir / "bench_build.json").read_text())
    counts = collections.Counter(
        w for r in load(PQAL).records for w in re.findall(r"[a-z]{2,}", r.context_text.lower())
    )
    vocab = np.array(list(counts))
    p = np.array(list(counts.values()), dtype=np.float64)
    p /= p.sum()
    mesh_names = [f"Synthetic Heading {i}" for i in range(3000)] + ["Diabetes Mellitus"]
    mesh_p = 1.0 / np.arange(1, len(mesh_names) + 1)
    mesh_p /= mesh_p.sum()
    rng = np.random.default_rng(0)
    coll = store.get_collection(ref, create=True) if chroma else None
    ds = store.load_docstore(ref, write=True)
    t0 = time.perf_counter()
    t_chroma = 0.0
    for start in range(0, n, batch):
        m = min(batch, n - start)
        toks = vocab[rng.choice(len(vocab), size=(m, words), p=p)]
        years = rng.integers(1975, 2025, size=m)
        review = rng.random(m) < 0.12
        rct = rng.random(m) < 0.05
        meshes = rng.choice(len(mesh_names), size=(m, 10), p=mesh_p)
        ids, texts, metas, docs = [], [], [], []
        for j in range(m):
            doc_id = f"s{start + j}"
            text = " ".join(toks[j])
            pub = "; ".join(
                ["Journal Article"]
                + (["Review"] if review[j] else [])
                + (["RCT"] if rct[j] else [])
            )
            meta = {
                "year": int(years[j]),
                "pubtypes": pub,
                "meshes": "; ".join(dict.fromkeys(mesh_names[k] for k in meshes[j])),
            }
            docs.append(make_document(doc_id, text, meta))
            ids.append(f"{doc_id}#0")
            texts.append(text)
            metas.append({"document_id": doc_id, **meta, **filters.flag_metadata(meta)})
        e = rng.standard_normal((m, 384)).astype("float32")
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        t1 = time.perf_counter()
        if coll is not None:
            coll.add(ids=ids, embeddings=e, documents=texts, metadatas=metas)
        t_chroma += time.perf_counter() - t1
        ds.set_document_hashes({d.id_: d.hash for d in docs})
        ds.add_documents(docs)
        store.save_docstore(ref, ds)
        done = start + m
        el = time.perf_counter() - t0
        print(
            f"  {done:,} chunks, {el:.0f} s ({done / el:.0f}/s; Chroma {t_chroma:.0f} s)",
            flush=True,
        )
    store.close_docstore(ds)
    bm25_build = bm25_build_process(home, n)
    if not chroma:
        info = json.loads((ref.dir / "bench_build.json").read_text())
        info.update(bm25_build)
        (ref.dir / "bench_build.json").write_text(json.dumps(info))
        return info
    assert coll is not None
    store.write_json_atomic(
        ref.dir / store.MANIFEST,
        {
            "collection": ref.collection,
            "embedding": ref.embedding,
            "documents": n,
            "chunks": coll.count(),
            "chunk_size": 512,
            "chunk_overlap": 64,
            "chroma": "embedded",
            "filters": filters.FLAGS_VERSION,
        },
    )
    info = {
        "chunks": n,
        "build_chroma_s": round(t_chroma, 1),
        "build_total_s": round(time.perf_counter() - t0, 1),
        "build_peak_rss_mb": rss_mb(),
        **bm25_build,
    }
    (ref.dir / "bench_build.json").write_text(json.dumps(info))
    return info


def bm25_build_process(home: Path, n: int) -> dict[str, Any]:
    """``store.build_bm25`` of the store's docstore (BM25 text with the MeSH field), whole, in a
    fresh process: its time and peak RSS."""
    from medllm.config import Settings
    from medllm.storage import store

    s = Settings.load(config_file=False, paths={"home": str(home)})
    ref = store.StoreRef.from_settings(s, f"synthetic{n}")
    import shutil

    shutil.rmtree(ref.dir / store.BM25_DIR, ignore_errors=True)
    out = subprocess.run(
        [sys.executable, __file__, "--bm25-build-only", "--chunks", str(n), "--home", str(home)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    got = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
    print(f"  BM25 built in {got['build_bm25_s']} s, peak RSS {got['build_bm25_peak_rss_mb']} MB")
    return dict(got)


def bm25_build_only(home: Path, n: int) -> dict[str, Any]:
    from medllm.config import Settings
    from medllm.storage import store

    s = Settings.load(config_file=False, paths={"home": str(home)})
    ref = store.StoreRef.from_settings(s, f"synthetic{n}")
    ds = store.load_docstore(ref)
    t = time.perf_counter()
    store.build_bm25(ref, ds, ["meshes"])
    return {
        "build_bm25_s": round(time.perf_counter() - t, 1),
        "build_bm25_peak_rss_mb": rss_mb(),
        "bm25_format": store.BM25_FORMAT,
    }


def query(
    home: Path,
    n: int,
    n_queries: int,
    n_filtered: int | None = None,
    port: int | None = None,
    ef_search: int | None = None,
) -> dict[str, Any]:
    """Runs in a fresh process: latency per mode and the process's peak RSS. The filtered
    modes use the first ``n_filtered`` questions (default: all ``n_queries``). ``port``: search
    through a Chroma server on 127.0.0.1 at that port instead of the embedded store.
    ``ef_search``: the HNSW search breadth to open the store with (default: the setting's)."""
    from medllm.config import Settings
    from medllm.pubmedqa import load
    from medllm.retrieval import Retriever

    qs = [r.question for r in load(PQAL).records][:n_queries]
    retrieval: dict[str, Any] = {"chroma_host": "127.0.0.1", "chroma_port": port} if port else {}
    if ef_search:
        retrieval["ef_search"] = ef_search
    s = Settings.load(config_file=False, paths={"home": str(home)}, retrieval=retrieval)
    t0 = time.perf_counter()
    r = Retriever.from_settings(s, f"synthetic{n}")
    r.search(qs[0], mode="hybrid")  # open Chroma, load the model and the BM25 index
    r.search(qs[0], mode="hybrid", where=WHERE)  # the filter's BM25 mask
    out: dict[str, Any] = {
        "open_and_first_query_s": round(time.perf_counter() - t0, 2),
        "ef_search": s.retrieval.ef_search,
    }
    for name, mode, where in [
        ("dense", "dense", None),
        ("bm25", "bm25", None),
        ("hybrid", "hybrid", None),
        ("dense_where", "dense", WHERE),
        ("hybrid_where", "hybrid", WHERE),
    ]:
        times = []
        for q in qs if where is None else qs[: n_filtered or len(qs)]:
            t = time.perf_counter()
            r.search(q, k=5, mode=mode, where=where)
            times.append(1000 * (time.perf_counter() - t))
        times.sort()
        out[name] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
        }
        print(f"  {name:13s} p50={out[name]['p50_ms']} ms p95={out[name]['p95_ms']} ms", flush=True)
    out["query_peak_rss_mb"] = rss_mb()
    return out


def query_process(
    home: Path, args: argparse.Namespace, port: int | None = None, ef: int | None = None
) -> Any:
    """:func:`query` in a fresh process (its output echoed); its RESULT."""
    proc = subprocess.run(
        [sys.executable, __file__, "--query-only", "--chunks", str(args.chunks),
         "--queries", str(args.queries), "--home", str(home),
         *(["--filtered-queries", str(args.filtered_queries)] if args.filtered_queries else []),
         *(["--port", str(port)] if port else []),
         *(["--ef-search", str(ef)] if ef else [])],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(proc.stdout, end="")
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def server_run(home: Path, args: argparse.Namespace) -> None:
    """The query benchmark against a Chroma server serving the built store's directory."""
    import urllib.request

    from medllm.config import Settings
    from medllm.storage import store

    s = Settings.load(config_file=False, paths={"home": str(home)})
    ref = store.StoreRef.from_settings(s, f"synthetic{args.chunks}")
    if not ref.exists():
        raise SystemExit(f"no store at {ref.dir}: run without --chroma-server first to build it")
    port = args.chroma_server
    # the server's store directory (BM25 index, manifest) is the embedded one's
    sref = store.StoreRef.from_settings(
        s.with_overrides(retrieval={"chroma_host": "127.0.0.1", "chroma_port": port}),
        f"synthetic{args.chunks}",
    )
    if not sref.dir.exists():
        sref.dir.symlink_to(ref.dir.resolve(), target_is_directory=True)
    chroma = Path(sys.executable).with_name("chroma")
    srv = subprocess.Popen(
        [str(chroma), "run", "--host", "127.0.0.1", "--port", str(port),
         "--path", str(ref.chroma_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )  # fmt: skip
    try:
        t0 = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2)
                break
            except OSError:
                if srv.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit("the Chroma server did not start") from None
                time.sleep(0.5)
        started = round(time.perf_counter() - t0, 1)
        got = query_process(home, args, port)
        hwm = rss_mb(srv.pid)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        "chroma": f"server (chroma run) on 127.0.0.1:{port}",
        "server_start_s": started,
        "server_peak_rss_mb": hwm,
        "query": got,
    }
    print(json.dumps(res, indent=1))
    OUT.mkdir(exist_ok=True)
    (OUT / f"scale_{args.chunks}_server.json").write_text(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--home", default=str(OUT / "home-scale"))
    ap.add_argument(
        "--filtered-queries",
        type=int,
        default=None,
        help="questions for the filtered modes (default: --queries; each costs seconds at 1 M)",
    )
    ap.add_argument(
        "--chroma-server",
        type=int,
        metavar="PORT",
        default=None,
        help="query the built store through `chroma run` on 127.0.0.1:PORT (a server process "
        "started and stopped here, serving the same Chroma directory); writes "
        "scale_<N>_server.json",
    )
    ap.add_argument(
        "--ef-search",
        default=None,
        help="HNSW search breadths to query with, comma-separated (each a fresh query process, "
        "in turn, so 100,400,100,400 alternates; default: the setting retrieval.ef_search); "
        "the first is the result's 'query', all are under 'query_by_ef_search'",
    )
    ap.add_argument(
        "--rebuild-bm25",
        action="store_true",
        help="rebuild the built store's BM25 index (and its docstore, when the store has none: "
        "the same documents again), then query it",
    )
    ap.add_argument("--query-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bm25-build-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    home = Path(args.home)
    if args.query_only:
        ef = int(args.ef_search) if args.ef_search else None
        got = query(home, args.chunks, args.queries, args.filtered_queries, args.port, ef)
        print("RESULT " + json.dumps(got))
        return
    if args.bm25_build_only:
        print("RESULT " + json.dumps(bm25_build_only(home, args.chunks)))
        return
    if args.chroma_server:
        server_run(home, args)
        return
    if args.rebuild_bm25:
        from medllm.config import Settings
        from medllm.storage import store

        s = Settings.load(config_file=False, paths={"home": str(home)})
        ref = store.StoreRef.from_settings(s, f"synthetic{args.chunks}")
        if not ref.exists():
            sys.exit("--rebuild-bm25: build the store first (the same command without it)")
        if (ref.dir / store.DOCSTORE).is_file():
            info = json.loads((ref.dir / "bench_build.json").read_text())
            info.update(bm25_build_process(home, args.chunks))
            (ref.dir / "bench_build.json").write_text(json.dumps(info))
        else:
            build(home, args.chunks, chroma=False)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        "queries": args.queries,
        "filtered_queries": args.filtered_queries or args.queries,
        "build": build(home, args.chunks),
    }
    print(json.dumps(res["build"]), flush=True)
    efs = [int(e) for e in args.ef_search.split(",")] if args.ef_search else [None]
    runs = [query_process(home, args, ef=ef) for ef in efs]
    res["query"] = runs[0]
    if args.ef_search:
        res["query_by_ef_search"] = runs
    from medllm.config import Settings
    from medllm.storage import store

    s = Settings.load(config_file=False, paths={"home": str(home)})
    ref = store.StoreRef.from_settings(s, f"synthetic{args.chunks}")
    res["disk_mb"] = {
        "bm25_index": round(du(ref.dir / store.BM25_DIR) / 1e6, 1),
        "chroma_all_collections": round(du(ref.chroma_dir) / 1e6, 1),
    }
    res["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(res, indent=1))
    OUT.mkdir(exist_ok=True)
    (OUT / f"scale_{args.chunks}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
