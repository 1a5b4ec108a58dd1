"""One store = one corpus × embedding model.

Layout under ``MEDLLM_HOME``::

    chroma/                               Chroma PersistentClient (all collections)
    stores/<name>/manifest.json           embedding model, chunking, counts
    stores/<name>/docstore.sqlite3        LlamaIndex docstore: whole documents + content hashes
                                          (one SQLite file; docstore.json before, converted)
    stores/<name>/bm25/                   BM25 index in segments (medllm.storage.bm25)
    stores/<name>/.lock                   one writer at a time

``<name>`` is ``<collection>__<embedding-slug>`` (plus ``@host-port`` for a Chroma server), and
is also the Chroma collection name (cosine space). The docstore is the source of truth: it is
committed (atomically) only after the chunks of its documents are in Chroma, and the BM25 index
records a fingerprint of the docstore it was built from, so a crash at any point is repaired by
running the same ingestion again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import StoreError
from medllm.fsutil import slug
from medllm.fsutil import write_json_atomic as write_json_atomic  # re-exported
from medllm.storage import bm25
from medllm.storage.bm25 import COLS as BM25_COLS  # filter columns: years, MeSH, pub. types
from medllm.storage.bm25 import IDS as BM25_IDS  # document ids in index order

if TYPE_CHECKING:
    from filelock import FileLock

    from medllm.config import Settings

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DOCSTORE = "docstore.sqlite3"  # medllm.storage.kvstore
LEGACY_DOCSTORE = "docstore.json"  # LlamaIndex SimpleDocumentStore: stores made before
BM25_DIR = "bm25"
BM25_FORMAT = "seg1"  # part of the BM25 fingerprint: older indexes are rebuilt once


@dataclass(frozen=True)
class StoreRef:
    """Where one store lives (paths and Chroma location); creating it touches nothing."""

    collection: str
    embedding: str
    home: Path
    chroma_host: str | None = None
    chroma_port: int = 8000

    @classmethod
    def from_settings(cls, settings: Settings, collection: str | None = None) -> StoreRef:
        r = settings.retrieval
        return cls(
            collection=collection or r.collection,
            embedding=settings.models.embedding,
            home=settings.paths.home,
            chroma_host=r.chroma_host,
            chroma_port=r.chroma_port,
        )

    @property
    def name(self) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]*", self.collection):
            raise StoreError(
                f"invalid collection name {self.collection!r}: use letters, digits, '.', '_', '-'"
            )
        n = f"{self.collection}__{slug(self.embedding)}"
        return n[:200]

    @property
    def dir(self) -> Path:
        d = self.home / "stores" / self.name
        if self.chroma_host:
            d = d.with_name(f"{self.name}@{self.chroma_host}-{self.chroma_port}")
        return d

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    def exists(self) -> bool:
        return (self.dir / MANIFEST).is_file()

    def lock(self) -> FileLock:
        from filelock import FileLock

        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / ".lock"), timeout=0)


def chunk_id(doc_id: str, n: int) -> str:
    """The Chroma id of a document's ``n``-th chunk (ingestion writes them; retrieval fetches
    a document's chunks by these ids)."""
    return f"{doc_id}#{n}"


def chroma_client(ref: StoreRef) -> Any:
    """A Chroma client: HttpClient for a server, else PersistentClient; telemetry off (here
    and in medllm/__init__.py, the one place setting the telemetry variables)."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    cs = ChromaSettings(anonymized_telemetry=False)
    if ref.chroma_host:
        try:
            return chromadb.HttpClient(host=ref.chroma_host, port=ref.chroma_port, settings=cs)
        except Exception as e:  # connection refused, bad host... (chromadb raises several)
            raise StoreError(
                f"cannot reach the Chroma server at {ref.chroma_host}:{ref.chroma_port} ({e}). "
                "Start it (`chroma run --host H --port P --path DIR`) or unset chroma_host "
                "to use the embedded store."
            ) from None
    ref.chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(ref.chroma_dir), settings=cs)


def get_collection(ref: StoreRef, *, create: bool, ef_search: int | None = None) -> Any:
    """The store's Chroma collection (created if ``create``).

    ``ef_search``: the HNSW search breadth the collection should have (Chroma keeps it with
    the collection and reads it when a process first searches it). A new collection is created
    with it; an existing one with another value is changed to it, so the call must come before
    this process's first query of the collection to take effect here."""
    client = chroma_client(ref)
    if create:
        coll = client.get_or_create_collection(
            ref.name,
            metadata={"hnsw:space": "cosine", "embedding": ref.embedding},
            configuration=(
                {"hnsw": {"space": "cosine", "ef_search": ef_search}} if ef_search else None
            ),
        )
    else:
        try:
            coll = client.get_collection(ref.name)
        except Exception:  # chromadb raises NotFoundError / ValueError depending on version
            raise StoreError(
                f"the Chroma collection {ref.name!r} is missing although {ref.dir} exists; "
                f"run `medllm ingest ...` again to rebuild it"
            ) from None
    if ef_search:
        set_ef_search(coll, ef_search)
    return coll


def ef_search_of(coll: Any) -> int | None:
    """The collection's HNSW ``ef_search`` (None where the Chroma version does not say)."""
    try:
        return int(coll.configuration["hnsw"]["ef_search"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def set_ef_search(coll: Any, ef_search: int) -> None:
    """Give ``coll`` the HNSW search breadth ``ef_search`` unless it has it already.

    Stores created before medllm set it have Chroma's default (100), which misses true
    nearest neighbours (bench/RESULTS.md, issue 13). A collection that cannot be changed
    (a read-only directory, a server that refuses) keeps its value, with a warning."""
    now = ef_search_of(coll)
    if now is None or now == ef_search:
        return
    try:
        coll.modify(configuration={"hnsw": {"ef_search": ef_search}})
    except Exception as e:  # chromadb raises several types (read-only db, server errors)
        logger.warning(
            "could not set the search breadth (ef_search) of %s from %d to %d (%s); "
            "dense search stays at %d",
            coll.name, now, ef_search, e, now,
        )  # fmt: skip
        return
    logger.info("store %s: HNSW ef_search %d -> %d", coll.name, now, ef_search)


# ----------------------------------------------------------------------------- manifest


def read_manifest(ref: StoreRef) -> dict[str, Any]:
    try:
        return dict(json.loads((ref.dir / MANIFEST).read_text()))
    except FileNotFoundError:
        if ref.dir.is_dir():
            raise StoreError(
                f"the store {ref.name} is not complete: its first ingestion is still running "
                f"or was stopped before it finished (no {MANIFEST} in {ref.dir}); wait for it, "
                "or run the ingestion again"
            ) from None
        raise StoreError(
            f"nothing ingested into collection {ref.collection!r} with embedding model "
            f"{ref.embedding!r} (no store at {ref.dir}); run `medllm ingest ...` first"
        ) from None
    except (OSError, ValueError) as e:
        raise StoreError(f"unreadable store manifest {ref.dir / MANIFEST}: {e}") from None


# ----------------------------------------------------------------------------- docstore


def load_docstore(ref: StoreRef, *, write: bool = False) -> Any:
    """The store's document store (LlamaIndex ``KVDocumentStore`` over one SQLite file,
    :mod:`medllm.storage.kvstore`; an empty in-memory one when nothing was ingested).

    ``write``: open it for the store's writer (who holds the store's lock), creating the file
    when needed. A store written before (``docstore.json``, LlamaIndex's
    ``SimpleDocumentStore``) is converted then, once: every entry copied as it is, so the
    documents, their hashes and the BM25 fingerprint stay the same. A reader of such a store
    reads the JSON file as before and changes nothing."""
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.storage.docstore.keyval_docstore import KVDocumentStore

    from medllm.storage.kvstore import SqliteKVStore

    path = ref.dir / DOCSTORE
    legacy = ref.dir / LEGACY_DOCSTORE
    if not path.is_file() and legacy.is_file():
        if not write:
            try:
                return SimpleDocumentStore.from_persist_path(str(legacy))
            except (OSError, ValueError) as e:
                if not path.is_file():  # else a writer converted it meanwhile: read that
                    raise StoreError(f"unreadable docstore {legacy}: {e}") from None
        else:
            _convert_legacy_docstore(legacy, path)
    if not write and not path.is_file():
        return SimpleDocumentStore()
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
    return KVDocumentStore(SqliteKVStore(path, readonly=not write))


def _convert_legacy_docstore(legacy: Path, path: Path) -> None:
    """Copy a ``SimpleDocumentStore`` JSON file's entries into a new SQLite docstore (written
    beside it and renamed into place, so a kill leaves the JSON store as it was), then remove
    the JSON file."""
    from medllm.storage.kvstore import SqliteKVStore

    try:
        data = json.loads(legacy.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"unreadable docstore {legacy}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise StoreError(f"unreadable docstore {legacy}: not a LlamaIndex SimpleDocumentStore")
    tmp = path.with_name(path.name + ".tmp")
    for f in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        f.unlink(missing_ok=True)
    kv = SqliteKVStore(tmp)
    for collection, entries in data.items():
        kv.put_all(list(entries.items()), collection=collection)
    kv.commit()
    kv.close()
    os.replace(tmp, path)
    legacy.unlink()
    logger.info("converted the docstore %s to %s (%d entries)", legacy, path.name,
                sum(len(v) for v in data.values()))  # fmt: skip


def save_docstore(ref: StoreRef, docstore: Any) -> None:
    """Make the changes of a docstore opened with ``write=True`` durable: a commit (atomic; a
    kill before it loses only the changes since the last one)."""
    docstore._kvstore.commit()


def close_docstore(docstore: Any) -> None:
    """Close the docstore's file (changes not saved are dropped)."""
    from medllm.storage.kvstore import docstore_kv

    kv = docstore_kv(docstore)
    if kv is not None:
        kv.close()


def iter_documents(docstore: Any) -> Iterator[Any]:
    """The docstore's documents in id order, read from its file a page at a time (an
    in-memory docstore: all at once)."""
    from medllm.storage.kvstore import iter_documents as it

    return it(docstore)


def docstore_count(docstore: Any) -> int:
    """How many documents the docstore holds, without reading them."""
    from medllm.storage.kvstore import docstore_kv

    kv = docstore_kv(docstore)
    if kv is not None:
        return int(kv.count(docstore._node_collection))
    return len(docstore.docs)


def docstore_fingerprint(docstore: Any, extra: str = "") -> str:
    """A hash of the docstore's (id, content hash) pairs, plus ``extra`` (index options)."""
    hashes = docstore.get_all_document_hashes()  # {hash: doc_id}
    h = hashlib.sha256(extra.encode())
    for doc_hash, doc_id in sorted(hashes.items(), key=lambda kv: kv[1]):
        h.update(f"{doc_id}\t{doc_hash}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- BM25


def bm25_fingerprint(ref: StoreRef) -> str | None:
    """The fingerprint the store's BM25 index records; None when it has none, or when a file
    it names is missing (so the next ingestion rebuilds it)."""
    path = ref.dir / BM25_DIR
    if bm25.is_segmented(path) and not bm25.intact(path):
        return None
    meta = path / "medllm.json"
    try:
        return str(json.loads(meta.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None


def bm25_wanted_fingerprint(docstore: Any, metadata_fields: Sequence[str] = ()) -> str:
    """The fingerprint a BM25 index built from ``docstore`` with these options records."""
    return docstore_fingerprint(
        docstore, extra=f"bm25-{BM25_FORMAT}-fields:" + ",".join(metadata_fields)
    )


def build_bm25(
    ref: StoreRef,
    docstore: Any,
    metadata_fields: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> int:
    """Bring the store's BM25 index in line with ``docstore`` (nothing to do when its
    fingerprint already matches); how many documents it holds.

    Each document is indexed as :func:`medllm.storage.bm25.text` (its text plus its
    ``metadata_fields``), tokenised as LlamaIndex's ``BM25Retriever`` does for English
    (English stopwords, Snowball stemmer). The index is kept in segments
    (:mod:`medllm.storage.bm25`): only new and changed documents are tokenised, into a new
    segment; removed and replaced ones are marked dead where they are. A store without an
    index, or with one of an older format or damaged, or with other
    ``metadata_fields``, gets one built whole, a segment at a time."""
    fp = bm25_wanted_fingerprint(docstore, metadata_fields)
    if bm25_fingerprint(ref) != fp:
        bm25.update(ref.dir / BM25_DIR, docstore, metadata_fields, fp, progress=progress)
    return docstore_count(docstore)


class LegacyBm25:
    """A BM25 index of before the segments (one ``bm25s`` index, LlamaIndex
    ``BM25Retriever`` format), opened for queries with :class:`medllm.storage.bm25.
    SegmentedIndex`'s interface until the store's next ingestion replaces it.

    With the side files (ids, filter columns) it is memory-mapped without its corpus; an
    older one loads whole, with its corpus."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        self.path = path
        self.stemmer = bm25._stemmer()
        bm = bm25._bm25s()
        self.corpus: Any = None
        if (path / BM25_IDS).is_file() and (path / BM25_COLS).is_file():
            self.bm25 = bm.BM25.load(str(path), load_corpus=False, mmap=True)
            self.ids = [str(i) for i in json.loads((path / BM25_IDS).read_text())]
            with np.load(path / BM25_COLS, allow_pickle=False) as z:
                self._cols: dict[str, Any] | None = {k: z[k] for k in z.files}
        else:
            self.bm25 = bm.BM25.load(str(path), load_corpus=True)
            self.corpus = self.bm25.corpus
            self.ids = [str(c["node_id"]) for c in self.corpus]
            self._cols = None
        self.size = self.num_docs = int(self.bm25.scores["num_docs"])
        self.dead_positions = np.zeros(0, dtype=np.int64)
        self._df: Any = None

    def positions(self) -> dict[str, int]:
        return {doc_id: i for i, doc_id in enumerate(self.ids)}

    def df(self, word: str) -> int:
        import numpy as np

        if self._df is None:
            self._df = np.diff(np.asarray(self.bm25.scores["indptr"]))
        i = self.bm25.vocab_dict.get(word)
        return int(self._df[i]) if i is not None and i < len(self._df) else 0

    def scores(self, tokens: Sequence[str]) -> Any:
        import numpy as np

        ids = self.bm25.get_tokens_ids(list(tokens))
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.bm25.get_scores_from_ids(ids), dtype=np.float32)

    def mask(self, w: Any) -> Any:
        from medllm.storage import filters

        if self._cols is not None:
            return filters.mask_columns(w, self._cols, len(self.ids))
        return filters.mask(w, self.corpus)


def load_bm25(ref: StoreRef) -> Any:
    """The store's BM25 index opened for queries (:class:`medllm.storage.bm25.SegmentedIndex`,
    or :class:`LegacyBm25` for an index of before), or None when the store has no documents.

    A query reads only the postings of its terms (from the files, through the page cache), and
    a query process holds the document ids and lengths, not the documents' texts."""
    path = ref.dir / BM25_DIR
    if bm25.is_segmented(path):
        index = bm25.open_index(path)
        return index if index.size else None
    if not (path / "retriever.json").is_file():
        if (path / "medllm.json").is_file():
            return None
        raise StoreError(f"BM25 index missing at {path}; run the ingestion again to rebuild it")
    return LegacyBm25(path)


def drop_store(ref: StoreRef) -> None:
    """Delete a store: its Chroma collection and its directory (a store being written to is
    refused: a :class:`StoreError`)."""
    from filelock import Timeout

    lock = ref.lock()
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(
            f"another process is writing to the store {ref.name} (lock {ref.dir / '.lock'}); "
            "wait for it to finish (or stop it) and run this again"
        ) from None
    try:
        client = chroma_client(ref)
        try:
            client.delete_collection(ref.name)
        except Exception:  # not there
            logger.debug("no collection %s to delete", ref.name)
        shutil.rmtree(ref.dir, ignore_errors=True)
    finally:
        lock.release()


def list_stores(settings: Settings) -> list[dict[str, Any]]:
    """Every store under MEDLLM_HOME with its manifest (counts, embedding model, chunking)."""
    root = settings.paths.stores_dir
    rows = []
    for d in sorted(root.glob("*/" + MANIFEST)) if root.is_dir() else []:
        try:
            m = json.loads(d.read_text())
        except (OSError, ValueError):
            continue
        m["path"] = str(d.parent)
        rows.append(m)
    return rows


def unfinished_stores(settings: Settings) -> list[dict[str, str]]:
    """Store directories :func:`list_stores` cannot list: without a manifest (``problem``
    "no manifest": a first ingestion still running, or one stopped before it finished — it may
    hold documents; running it again completes it), or with one that cannot be read
    ("unreadable manifest: …")."""
    root = settings.paths.stores_dir
    dirs = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    out = []
    for d in dirs:
        path = d / MANIFEST
        if not path.is_file():
            out.append({"store": d.name, "path": str(d), "problem": "no manifest"})
            continue
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as e:
            why = f"unreadable manifest: {e}"
            out.append({"store": d.name, "path": str(d), "problem": why})
    return out


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def store_sizes(row: dict[str, Any], dim: int = 384) -> dict[str, Any]:
    """Sizes on disk of one store (a :func:`list_stores` row) and an estimate of what a query
    process holds in memory for it.

    Memory: Chroma keeps the collection's HNSW index in RAM (``chunks × (4·dim + ~150)``
    bytes: the float32 vectors plus graph links; ``dim`` 384 for MiniLM); the BM25 index is
    read from its files a term at a time (postings and vocabulary, from the page cache), so only
    its document ids and lengths and the filter columns are resident (ids and lengths: their
    file sizes × ~3); the docstore is
    read only to fetch whole documents by id — a lookup in its SQLite file; a store still on
    the JSON docstore of before reads that file whole (its size × ~3 then)."""
    d = Path(row["path"])
    bdir = d / BM25_DIR
    files = [f for f in bdir.rglob("*") if f.is_file()]
    # read per query, from the page cache: postings and vocabulary (older indexes: mapped)
    on_demand = sum(
        f.stat().st_size
        for f in files
        if f.name in ("vocab.bin", "vocab_off.npy", "indptr.npy", "docs.npy", "tf.npy")
        or (f.parent == bdir and f.suffix == ".npy")
    )
    # read whole: ids (as Python strings, ~3x), lengths (int32 + a float64 copy), columns
    resident = sum(
        3 * f.stat().st_size
        if f.name in (BM25_IDS, "vocab.index.json", "doclen.npy")
        else f.stat().st_size
        for f in files
        if f.name in (BM25_IDS, "vocab.index.json", "doclen.npy", BM25_COLS)
    )
    m = bm25.read_manifest(bdir) or {}
    segs = m.get("segments", []) if m.get("format") == bm25.FORMAT else []
    index = {
        "format": m.get("format", "bm25s (before segments)" if files else None),
        "segments": len(segs),
        "documents": m.get("docs"),
        "dead_documents": sum(int(x["docs"]) for x in segs) - int(m.get("docs") or 0),
    }
    chroma = row.get("chroma", "")
    embedded = bool(chroma) and Path(str(chroma)).is_dir()
    chunks = int(row.get("chunks") or 0)
    return {
        "bm25_index": index,
        "disk_bytes": {
            "bm25": _du(bdir),
            "docstore": _du(d / DOCSTORE) + _du(d / f"{DOCSTORE}-wal") + _du(d / LEGACY_DOCSTORE),
            # one embedded Chroma directory holds every collection; None for a server
            "chroma_all_collections": _du(Path(str(chroma))) if embedded else None,
        },
        "memory_bytes_estimate": {
            "hnsw": chunks * (4 * dim + 150),
            "bm25_resident": resident,
            "bm25_read_per_query": on_demand,
            "docstore_when_fetching": 3 * _du(d / LEGACY_DOCSTORE),
        },
    }
