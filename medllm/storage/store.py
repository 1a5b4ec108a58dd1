"""One store = one corpus × embedding model.

Layout under ``MEDLLM_HOME``::

    chroma/                               Chroma PersistentClient (all collections)
    stores/<name>/manifest.json           embedding model, chunking, counts
    stores/<name>/docstore.sqlite3        LlamaIndex docstore: whole documents + content hashes
                                          (one SQLite file; docstore.json before, converted)
    stores/<name>/bm25/                   bm25s index over the documents (BM25Retriever format)
    stores/<name>/.lock                   one writer at a time

``<name>`` is ``<collection>__<embedding-slug>`` (plus ``@host-port`` for a Chroma server), and
is also the Chroma collection name (cosine space). The docstore is the source of truth: it is
committed (atomically) only after the chunks of its documents are in Chroma, and the BM25 index
records a fingerprint of the docstore it was built from, so a crash at any point is repaired by
running the same ingestion again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import StoreError
from medllm.fsutil import slug

if TYPE_CHECKING:
    from filelock import FileLock

    from medllm.config import Settings

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DOCSTORE = "docstore.sqlite3"  # medllm.storage.kvstore
LEGACY_DOCSTORE = "docstore.json"  # LlamaIndex SimpleDocumentStore: stores made before
BM25_DIR = "bm25"
BM25_IDS = "medllm_ids.json"  # document ids in BM25 corpus order
BM25_COLS = "medllm_cols.npz"  # filter columns: years, MeSH / publication-type postings
BM25_FORMAT = "cols1"  # part of the BM25 fingerprint: older indexes are rebuilt once
# LlamaIndex BM25Retriever's default token pattern: every index is built (and queried) with it.
BM25_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


@dataclass
class Bm25Index:
    """An opened BM25 index: what a query needs of LlamaIndex's ``BM25Retriever`` (the
    ``bm25s.BM25`` scorer and how queries are tokenised), opened without LlamaIndex."""

    bm25: Any  # bm25s.BM25
    stemmer: Any  # Stemmer.Stemmer, or None
    token_pattern: str = BM25_TOKEN_PATTERN
    skip_stemming: bool = False
    corpus: Any = None  # only for indexes from before the side files (BM25_IDS)


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
        raise StoreError(
            f"nothing ingested into collection {ref.collection!r} with embedding model "
            f"{ref.embedding!r} (no store at {ref.dir}); run `medllm ingest ...` first"
        ) from None
    except (OSError, ValueError) as e:
        raise StoreError(f"unreadable store manifest {ref.dir / MANIFEST}: {e}") from None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


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


def _sqlite_kv(docstore: Any) -> Any:
    """The docstore's SQLite key-value store, or None for an in-memory docstore (a store that
    has none yet, or a reader of a JSON docstore of before)."""
    from medllm.storage.kvstore import SqliteKVStore

    kv = getattr(docstore, "_kvstore", None)
    return kv if isinstance(kv, SqliteKVStore) else None


def close_docstore(docstore: Any) -> None:
    """Close the docstore's file (changes not saved are dropped)."""
    kv = _sqlite_kv(docstore)
    if kv is not None:
        kv.close()


def iter_documents(docstore: Any) -> Iterator[Any]:
    """The docstore's documents in id order, read from its file a page at a time (an
    in-memory docstore: all at once)."""
    from llama_index.core.storage.docstore.utils import json_to_doc

    kv = _sqlite_kv(docstore)
    if kv is not None:
        for _, value in kv.items(docstore._node_collection):
            yield json_to_doc(value)
    else:
        yield from sorted(docstore.docs.values(), key=lambda d: d.id_)


def docstore_count(docstore: Any) -> int:
    """How many documents the docstore holds, without reading them."""
    kv = _sqlite_kv(docstore)
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
    meta = ref.dir / BM25_DIR / "medllm.json"
    try:
        return str(json.loads(meta.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None


def bm25_wanted_fingerprint(docstore: Any, metadata_fields: Sequence[str] = ()) -> str:
    """The fingerprint a BM25 index built from ``docstore`` with these options records."""
    return docstore_fingerprint(
        docstore, extra=f"bm25-{BM25_FORMAT}-fields:" + ",".join(metadata_fields)
    )


def bm25_text(doc: Any, metadata_fields: Sequence[str] = ()) -> str:
    """A document's BM25 text: its text, then the values of ``metadata_fields`` it has.

    Index terms such as PubMedQA's MeSH headings are metadata of the document (assigned by
    indexers from the full article), not of any question about it; matching on them is what
    PubMed search itself does. They are searched by BM25 only, never embedded or shown.
    """
    parts = [doc.text]
    for key in metadata_fields:
        value = (doc.metadata or {}).get(key)
        if isinstance(value, list | tuple):
            value = "; ".join(map(str, value))
        if value not in (None, ""):
            parts.append(str(value))
    return "\n".join(parts)


def build_bm25(ref: StoreRef, docstore: Any, metadata_fields: Sequence[str] = ()) -> int:
    """Rebuild the BM25 index over the docstore's documents (written to a temp dir, swapped).

    Each document is indexed as :func:`bm25_text` (its text plus ``metadata_fields``),
    tokenised as LlamaIndex's ``BM25Retriever.from_defaults(language="en")`` does (English
    stopwords, Snowball stemmer). The index is saved without a corpus (no second copy of every
    text: the docstore has them); the ids and filter columns go to side files
    (:func:`write_bm25_columns`) so that a query process can memory-map the index.
    """
    import bm25s
    import Stemmer

    BM25Retriever = _bm25_retriever_cls()
    texts: list[str] = []
    columns: list[tuple[str, dict[str, Any]]] = []
    for d in iter_documents(docstore):  # only the texts and metadata held, not the documents
        texts.append(bm25_text(d, metadata_fields))
        columns.append((d.id_, d.metadata or {}))
    final = ref.dir / BM25_DIR
    tmp = ref.dir / (BM25_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if texts:
        stemmer = Stemmer.Stemmer("english")
        pattern = BM25_TOKEN_PATTERN
        tokens = bm25s.tokenize(
            texts,
            stopwords="en",
            stemmer=stemmer,
            token_pattern=pattern,
            show_progress=False,
        )
        index = bm25s.BM25()
        index.index(tokens, show_progress=False)
        del tokens, texts
        retriever = BM25Retriever(
            existing_bm25=index, stemmer=stemmer, token_pattern=pattern, similarity_top_k=1
        )
        retriever.corpus = None
        retriever.persist(str(tmp), show_progress=False)
        del retriever
    write_bm25_columns(tmp, columns)
    write_json_atomic(
        tmp / "medllm.json",
        {
            "fingerprint": bm25_wanted_fingerprint(docstore, metadata_fields),
            "docs": len(columns),
            "metadata_fields": list(metadata_fields),
        },
    )
    old = ref.dir / (BM25_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return len(columns)


def write_bm25_columns(path: Path, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """The side files a query process reads instead of the BM25 corpus (which holds every
    document's text): ids in corpus order, years, and term → documents postings for the
    MeSH / publication-type filters (:mod:`medllm.storage.filters`)."""
    import numpy as np

    from medllm.storage import filters

    (path / BM25_IDS).write_text(json.dumps([i for i, _ in docs]))
    cols: dict[str, Any] = {}
    years = np.full(len(docs), -1, dtype=np.int32)
    for n, (_, meta) in enumerate(docs):
        with contextlib.suppress(TypeError, ValueError):
            years[n] = int(meta.get("year"))  # type: ignore[arg-type]
    cols["years"] = years
    for key, fld in filters.LIST_FIELDS.items():
        postings: dict[str, list[int]] = {}
        for n, (_, meta) in enumerate(docs):
            for t in filters.split_terms(meta.get(fld)):
                postings.setdefault(t.lower(), []).append(n)
        terms = sorted(postings)
        sizes = [len(postings[t]) for t in terms]
        cols[f"{key}_terms"] = np.asarray(terms, dtype=str)
        cols[f"{key}_indptr"] = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        cols[f"{key}_indices"] = np.asarray([i for t in terms for i in postings[t]], dtype=np.int32)
    with open(path / BM25_COLS, "wb") as fh:
        np.savez(fh, **cols)


def load_bm25_columns(ref: StoreRef) -> tuple[list[str], dict[str, Any]] | None:
    """(ids in corpus order, filter columns) of the BM25 index; None for an older index."""
    import numpy as np

    path = ref.dir / BM25_DIR
    if not (path / BM25_IDS).is_file() or not (path / BM25_COLS).is_file():
        return None
    ids = [str(i) for i in json.loads((path / BM25_IDS).read_text())]
    with np.load(path / BM25_COLS, allow_pickle=False) as z:
        cols = {k: z[k] for k in z.files}
    return ids, cols


def _bm25_retriever_cls() -> Any:
    from llama_index.retrievers.bm25 import BM25Retriever

    # bm25s sets its own logger to DEBUG when imported; follow the application's level.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return BM25Retriever


def load_bm25(ref: StoreRef) -> Bm25Index | None:
    """The persisted BM25 index, or None when the store has no documents.

    An index with the side files of :func:`write_bm25_columns` is opened memory-mapped
    (bm25s ``mmap=True``) without its corpus and without LlamaIndex (a cold query process
    spares its ~1 s of imports): the score arrays stay on disk and only the pages a query's
    terms touch are read, so a query process holds the vocabulary and the document ids, not
    every document's text. Older indexes (no side files) load whole, with their corpus."""
    path = ref.dir / BM25_DIR
    if not (path / "retriever.json").is_file():
        if (path / "medllm.json").is_file():
            return None
        raise StoreError(f"BM25 index missing at {path}; run the ingestion again to rebuild it")
    import bm25s
    import Stemmer

    # bm25s sets its own logger to DEBUG when imported; follow the application's level.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    # build_bm25 writes the retriever's defaults (English stemmer, BM25_TOKEN_PATTERN, as
    # BM25Retriever.from_persist_dir reads them back); retriever.json holds only its top-k.
    stemmer = Stemmer.Stemmer("english")
    if (path / BM25_IDS).is_file():
        bm25 = bm25s.BM25.load(str(path), load_corpus=False, mmap=True)
        return Bm25Index(bm25=bm25, stemmer=stemmer)
    bm25 = bm25s.BM25.load(str(path), load_corpus=True)
    return Bm25Index(bm25=bm25, stemmer=stemmer, corpus=bm25.corpus)


def drop_store(ref: StoreRef) -> None:
    """Delete a store: its Chroma collection and its directory."""
    with ref.lock():
        client = chroma_client(ref)
        try:
            client.delete_collection(ref.name)
        except Exception:  # not there
            logger.debug("no collection %s to delete", ref.name)
        shutil.rmtree(ref.dir, ignore_errors=True)


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


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def store_sizes(row: dict[str, Any], dim: int = 384) -> dict[str, Any]:
    """Sizes on disk of one store (a :func:`list_stores` row) and an estimate of what a query
    process holds in memory for it.

    Memory: Chroma keeps the collection's HNSW index in RAM (``chunks × (4·dim + ~150)``
    bytes: the float32 vectors plus graph links; ``dim`` 384 for MiniLM); the BM25 index is
    memory-mapped, so only its vocabulary, document ids and filter columns are resident
    (their file sizes × ~3 for Python objects); the docstore is read only to fetch whole
    documents by id — a lookup in its SQLite file; a store still on the JSON docstore of
    before reads that file whole (its size × ~3 then)."""
    d = Path(row["path"])
    bm25 = d / BM25_DIR
    mapped = sum(_du(f) for f in bm25.glob("*.npy"))
    resident = 3 * sum(_du(bm25 / f) for f in ("vocab.index.json", BM25_IDS)) + _du(
        bm25 / BM25_COLS
    )
    chroma = row.get("chroma", "")
    embedded = bool(chroma) and Path(str(chroma)).is_dir()
    chunks = int(row.get("chunks") or 0)
    return {
        "disk_bytes": {
            "bm25": _du(bm25),
            "docstore": _du(d / DOCSTORE) + _du(d / f"{DOCSTORE}-wal") + _du(d / LEGACY_DOCSTORE),
            # one embedded Chroma directory holds every collection; None for a server
            "chroma_all_collections": _du(Path(str(chroma))) if embedded else None,
        },
        "memory_bytes_estimate": {
            "hnsw": chunks * (4 * dim + 150),
            "bm25_resident": resident,
            "bm25_mapped_on_demand": mapped,
            "docstore_when_fetching": 3 * _du(d / LEGACY_DOCSTORE),
        },
    }
