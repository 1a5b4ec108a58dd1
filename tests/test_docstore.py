"""The docstore in one SQLite file: committed writes only, readers beside a writer, and stores
written before (LlamaIndex's JSON ``SimpleDocumentStore``) converted once without changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medllm.config import Settings

ROWS: list[dict[str, Any]] = [
    {"id": "a", "text": "Aspirin reduces the risk of myocardial infarction.", "year": 2001},
    {"id": "b", "text": "Metformin is first-line therapy for type 2 diabetes.", "year": 2005},
    {"id": "c", "text": "Statins lower LDL cholesterol and cardiovascular events.", "year": 2010},
]


@pytest.fixture(scope="module")
def embed() -> Any:
    from medllm.models import load_embedding

    return load_embedding(settings=Settings.load(config_file=False))


def _ingest(tmp_path: Path, embed: Any, rows: list[dict[str, Any]]) -> Any:
    from medllm.pipelines.ingest import ingest_files

    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ingest_files(Settings.load(config_file=False), [p], embed_model=embed,
                        show_progress=False)  # fmt: skip


def test_sqlite_kv_readers_see_only_committed_writes(tmp_path: Path) -> None:
    from medllm.storage.kvstore import SqliteKVStore

    w = SqliteKVStore(tmp_path / "d.sqlite3")
    w.put_all([("k1", {"v": 1}), ("k2", {"v": 2})], collection="c")
    r = SqliteKVStore(tmp_path / "d.sqlite3", readonly=True)
    assert r.get("k1", "c") is None and r.count("c") == 0  # not committed yet
    assert w.get("k1", "c") == {"v": 1}  # the writer sees its own writes
    w.commit()
    assert r.get_all("c") == {"k1": {"v": 1}, "k2": {"v": 2}}
    w.put("k1", {"v": 3}, collection="c")
    assert w.delete("k2", "c") and not w.delete("nope", "c")
    w.close()  # closed without a commit: dropped, as a kill would
    assert r.get_all("c") == {"k1": {"v": 1}, "k2": {"v": 2}}
    wal = tmp_path / "d.sqlite3-wal"  # folded into the file on close
    assert not wal.exists() or wal.stat().st_size == 0
    assert r.get("k1", "other") is None
    with pytest.raises(Exception, match="readonly|read-only|attempt to write"):
        r.put("k9", {}, collection="c")


def test_items_are_read_in_pages_in_key_order(tmp_path: Path) -> None:
    from medllm.storage.kvstore import SqliteKVStore

    w = SqliteKVStore(tmp_path / "d.sqlite3")
    keys = [f"{i:05d}" for i in range(2500)]
    w.put_all([(k, {"i": int(k)}) for k in reversed(keys)])
    w.commit()
    got = list(w.items())
    assert [k for k, _ in got] == keys and got[1234][1] == {"i": 1234}
    assert w.count() == 2500


def test_ingested_documents_are_fetched_by_id_and_a_reader_changes_nothing(
    tmp_path: Path, embed: Any
) -> None:
    from medllm.retrieval import Retriever
    from medllm.storage import store

    s = Settings.load(config_file=False)
    ref = store.StoreRef.from_settings(s)
    summ = _ingest(tmp_path, embed, ROWS)
    assert summ.documents_total == 3
    assert (ref.dir / store.DOCSTORE).is_file() and not (ref.dir / store.LEGACY_DOCSTORE).exists()
    r = Retriever.from_settings(s, embed_model=embed)
    doc = r.get("b")
    assert doc is not None and "Metformin" in doc.text and doc.metadata["year"] == 2005
    assert r.get("zzz") is None
    # a second ingestion while this reader is open: it sees the committed new document
    _ingest(tmp_path, embed, [*ROWS, {"id": "d", "text": "Warfarin needs INR monitoring."}])
    d = r.get("d")
    assert d is not None and "Warfarin" in d.text


def test_a_json_docstore_of_before_is_converted_once_with_everything_kept(
    tmp_path: Path, embed: Any
) -> None:
    """A store written by medllm before (docstore.json): read as it is by a query process,
    converted by the next writer entry for entry — same documents and hashes, so nothing is
    re-embedded and the BM25 index is not rebuilt."""
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.storage.docstore.keyval_docstore import KVDocumentStore

    from medllm.retrieval import Retriever
    from medllm.storage import store
    from medllm.storage.kvstore import SqliteKVStore

    s = Settings.load(config_file=False)
    ref = store.StoreRef.from_settings(s)
    _ingest(tmp_path, embed, ROWS)
    # Turn the store into one of before: its docstore as LlamaIndex's JSON file.
    kv = SqliteKVStore(ref.dir / store.DOCSTORE, readonly=True)
    old = SimpleDocumentStore()
    colls = {c for (c,) in kv._conn.execute("SELECT DISTINCT collection FROM kv")}
    assert {"docstore/data", "docstore/metadata"} <= colls
    for c in colls:
        old._kvstore.put_all(list(kv.get_all(c).items()), collection=c)
    kv.close()
    (ref.dir / store.DOCSTORE).unlink()
    old.persist(persist_path=str(ref.dir / store.LEGACY_DOCSTORE))
    bm25_meta = ref.dir / store.BM25_DIR / "medllm.json"
    bm25_before = (bm25_meta.read_text(), bm25_meta.stat().st_mtime_ns)

    r = Retriever.from_settings(s, embed_model=embed)
    a = r.get("a")
    assert a is not None and "Aspirin" in a.text
    assert not (ref.dir / store.DOCSTORE).exists()  # a reader converts nothing

    again = _ingest(tmp_path, embed, ROWS)
    assert (again.new, again.updated, again.unchanged, again.chunks) == (0, 0, 3, 0)
    assert (ref.dir / store.DOCSTORE).is_file() and not (ref.dir / store.LEGACY_DOCSTORE).exists()
    assert not list(ref.dir.glob("*.tmp*"))
    assert (bm25_meta.read_text(), bm25_meta.stat().st_mtime_ns) == bm25_before  # not rebuilt
    new = store.load_docstore(ref)
    assert isinstance(new, KVDocumentStore) and not isinstance(new, SimpleDocumentStore)
    assert new.get_all_document_hashes() == old.get_all_document_hashes()
    assert {k: v.get_content() for k, v in new.docs.items()} == {
        k: v.get_content() for k, v in old.docs.items()
    }
    b = Retriever.from_settings(s, embed_model=embed).get("b")
    assert b is not None and b.metadata == r.get("b").metadata  # type: ignore[union-attr]


def test_an_unreadable_json_docstore_is_named_and_left_alone(tmp_path: Path) -> None:
    from medllm.errors import StoreError
    from medllm.storage import store

    ref = store.StoreRef.from_settings(Settings.load(config_file=False))
    ref.dir.mkdir(parents=True)
    bad = ref.dir / store.LEGACY_DOCSTORE
    bad.write_text("{not json")
    with pytest.raises(StoreError, match="docstore.json"):
        store.load_docstore(ref, write=True)
    assert bad.read_text() == "{not json" and not (ref.dir / store.DOCSTORE).exists()


def test_documents_stream_in_id_order_as_the_bm25_build_reads_them(tmp_path: Path) -> None:
    from llama_index.core import Document

    from medllm.storage import store

    ref = store.StoreRef.from_settings(Settings.load(config_file=False))
    ds = store.load_docstore(ref, write=True)
    ids = ["9", "10", "b", "a", "é", "Z", *(f"p{i}" for i in range(1500))]
    docs = [Document(id_=i, text=f"text of {i}", metadata={"year": 2000}) for i in ids]
    ds.add_documents(docs)
    ds.set_document_hashes({d.id_: d.hash for d in docs})
    store.save_docstore(ref, ds)
    got = list(store.iter_documents(ds))
    assert [d.id_ for d in got] == sorted(ids)  # the order of the in-memory docstore's build
    assert got[0].text == f"text of {sorted(ids)[0]}" and got[0].metadata == {"year": 2000}
    assert store.docstore_count(ds) == len(ids)
    store.close_docstore(ds)
