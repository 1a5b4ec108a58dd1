"""The docstore at scale: LlamaIndex's JSON ``SimpleDocumentStore`` (medllm's docstore before)
against medllm's SQLite docstore (``medllm.storage.kvstore``), on N synthetic PubMed-shaped
documents (default 100,000).

    PYTHONPATH=. .venv/bin/python bench/docstore.py --docs 100000

Documents: the 1,000 PQA-L abstracts cycled, each copy with its own id and a unique first
sentence (so every text and hash differs), with PubMed ingestion's kind of metadata (year,
title, journal, MeSH headings, publication types). Measured, in this order:

1. writing all N (JSON: ``add_documents`` + hashes + one ``persist``; SQLite: the same calls
   + one commit);
2. one ingestion save once the store holds N documents — 64 documents more, then the save
   (JSON: the whole file rewritten, as medllm did every 30 s of an ingestion; SQLite: a
   commit); then the sizes on disk (N + 64 documents);
3. a query process fetching one whole document by id (what ``Retriever.get`` does for the
   agent's ``get`` tool and RAGAS): a fresh subprocess that opens the store's docstore with
   ``store.load_docstore`` and fetches 20 ids; seconds to the first document, the 19 others,
   and its peak RSS (VmHWM) against a process that only imports the same modules;
4. building the BM25 index from each (``store.build_bm25``, MeSH field, a fresh subprocess
   each): seconds and peak RSS — the JSON docstore is read whole first, the SQLite one is
   read a page at a time;
5. converting the JSON docstore to SQLite the way a writer does on a store of before
   (``store.load_docstore(ref, write=True)``).

Writes bench/out/docstore_<N>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
OUT = Path(__file__).parent / "out"
PQAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pubmedqa" / "ori_pqal.json"

FETCH = r"""
import sys, time, json
from pathlib import Path
t0 = time.perf_counter()
from medllm.storage import store
from llama_index.core.storage.docstore import SimpleDocumentStore  # noqa: F401 (both imported)
from llama_index.core.storage.docstore.keyval_docstore import KVDocumentStore  # noqa: F401
t_import = time.perf_counter() - t0
from medllm.config import Settings
ids = json.loads(sys.argv[3])
out = {"import_s": round(t_import, 2)}
if sys.argv[4] == "bm25":
    s = Settings.load(config_file=False, paths={"home": sys.argv[1]})
    ref = store.StoreRef.from_settings(s, sys.argv[2])
    t = time.perf_counter()
    ds = store.load_docstore(ref)  # as a writer holds it: JSON read whole / the SQLite file
    out["bm25_docs"] = store.build_bm25(ref, ds, ["mesh"])
    out["bm25_build_s"] = round(time.perf_counter() - t, 1)
if sys.argv[4] == "fetch":
    s = Settings.load(config_file=False, paths={"home": sys.argv[1]})
    t = time.perf_counter()
    ds = store.load_docstore(store.StoreRef.from_settings(s, sys.argv[2]))
    first = ds.get_document(ids[0])
    out["first_fetch_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    n = sum(len(ds.get_document(i).text) > 0 for i in ids[1:])
    out["next_fetches_ms_each"] = round(1000 * (time.perf_counter() - t) / max(len(ids) - 1, 1), 3)
    out["fetched"] = 1 + n
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        out["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
print(json.dumps(out))
"""


def documents(n: int, start: int = 0) -> list[Any]:
    from llama_index.core import Document

    recs = list(json.loads(PQAL.read_text()).values())
    out = []
    for i in range(start, start + n):
        r = recs[i % len(recs)]
        out.append(
            Document(
                id_=str(40_000_000 + i),
                text=f"Record {i}. " + " ".join(r["CONTEXTS"]),
                metadata={
                    "source": "pubmed",
                    "pmid": str(40_000_000 + i),
                    "year": int(r["YEAR"] or 2000),
                    "title": r["QUESTION"],
                    "journal": "Synthetic Journal of Medicine",
                    "mesh": list(r["MESHES"]),
                    "pubtypes": ["Journal Article"],
                },
            )
        )
    return out


def add(ds: Any, docs: list[Any]) -> None:
    ds.set_document_hashes({d.id_: d.hash for d in docs})
    ds.add_documents(docs, allow_update=True)


def probe(home: Path, collection: str, ids: list[str], what: str) -> dict[str, Any]:
    """Run the ``FETCH`` script in a fresh process (``what``: import, fetch or bm25)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run(
        [sys.executable, "-c", FETCH, str(home), collection, json.dumps(ids), what],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def du(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    args = ap.parse_args()

    import shutil

    from llama_index.core.storage.docstore import SimpleDocumentStore

    from medllm.config import Settings
    from medllm.storage import store

    n = args.docs
    home = OUT / f"home-docstore-{n}"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings.load(config_file=False, paths={"home": str(home)})
    jref = store.StoreRef.from_settings(settings, "docjson")
    sref = store.StoreRef.from_settings(settings, "docsqlite")
    jdir, sdir = jref.dir, sref.dir
    jdir.mkdir(parents=True)
    sdir.mkdir(parents=True)
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "docs": n}
    t = time.perf_counter()
    docs = documents(n)
    more = documents(64, start=n)
    res["make_documents_s"] = round(time.perf_counter() - t, 1)
    ids = [docs[i].id_ for i in range(0, n, max(n // 20, 1))][:20]

    # 1. write all N
    t = time.perf_counter()
    js = SimpleDocumentStore()
    add(js, docs)
    js.persist(persist_path=str(jdir / store.LEGACY_DOCSTORE))
    res["json_write_all_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    sq = store.load_docstore(sref, write=True)
    add(sq, docs)
    store.save_docstore(sref, sq)
    res["sqlite_write_all_s"] = round(time.perf_counter() - t, 1)
    jpath, spath = jdir / store.LEGACY_DOCSTORE, sdir / store.DOCSTORE
    print(json.dumps(res), flush=True)

    # 2. one save with N documents held (64 added)
    add(js, more)
    t = time.perf_counter()
    tmp = jpath.with_name(jpath.name + ".tmp")
    js.persist(persist_path=str(tmp))
    os.replace(tmp, jpath)
    res["json_save_after_64_more_s"] = round(time.perf_counter() - t, 2)
    add(sq, more)
    t = time.perf_counter()
    store.save_docstore(sref, sq)
    res["sqlite_save_after_64_more_s"] = round(time.perf_counter() - t, 4)
    store.close_docstore(sq)  # (its write-ahead log checkpointed into the file and removed)
    res["json_bytes"] = du(jpath)
    res["sqlite_bytes"] = du(spath, Path(f"{spath}-wal"))
    del js, sq, docs
    print(json.dumps(res), flush=True)

    # 3. a query process fetching documents by id
    res["import_only"] = probe(home, "docjson", ids, "import")
    res["json_fetch"] = probe(home, "docjson", ids, "fetch")
    res["sqlite_fetch"] = probe(home, "docsqlite", ids, "fetch")
    print(json.dumps(res), flush=True)

    # 4. the BM25 index built from each (a writer's last step after any change)
    res["json_bm25_build"] = probe(home, "docjson", ids, "bm25")
    res["sqlite_bm25_build"] = probe(home, "docsqlite", ids, "bm25")
    print(json.dumps(res), flush=True)

    # 5. converting a store of before (the JSON docstore) as its next writer does
    t = time.perf_counter()
    conv = store.load_docstore(jref, write=True)
    res["convert_json_to_sqlite_s"] = round(time.perf_counter() - t, 1)
    res["converted_count"] = store.docstore_count(conv)
    store.close_docstore(conv)
    OUT.mkdir(exist_ok=True)
    (OUT / f"docstore_{n}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
