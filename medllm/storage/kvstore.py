"""A LlamaIndex key-value store in one SQLite file: the docstore's backend.

LlamaIndex's ``SimpleDocumentStore`` keeps every document in one JSON file that is read whole
to look up a single document and rewritten whole on every save — fine for thousands of
abstracts, not for PubMed (bench/RESULTS.md, issue 15: ~3.5 KB a document). Here each
(collection, key) is a row: a document is fetched by its primary key, a save commits only
what changed, and a reader (``medllm ask`` fetching a whole abstract) reads the last committed
state while an ingestion writes (SQLite's write-ahead log). The document store on top is
LlamaIndex's own ``KVDocumentStore`` — the same documents, hashes and semantics as
``SimpleDocumentStore``, which is a ``KVDocumentStore`` over an in-memory dict.

Writes stay in one open transaction until :meth:`SqliteKVStore.commit`: a process killed
before it leaves the file as of the last commit, as the JSON docstore was as of its last save.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llama_index.core.storage.kvstore.types import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COLLECTION,
    BaseKVStore,
)

from medllm.errors import StoreError

# Values are JSON compressed with zlib (a PubMed abstract's entry ~3.7 KB → ~1.2 KB, read
# back in ~20 µs); a rowid table, since its rows are too large for a WITHOUT ROWID one.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (collection TEXT NOT NULL, key TEXT NOT NULL, "
    "value BLOB NOT NULL, UNIQUE (collection, key))"
)
_LEVEL = 1  # zlib: 3.2× on abstracts, as small as level 6 within 4 %


class SqliteKVStore(BaseKVStore):
    """Rows ``(collection, key, JSON value)`` in the SQLite file ``path``.

    ``readonly``: open an existing file for reading only (a query process); it sees what the
    writer has committed. One connection, shared by the threads of a process under a lock.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        try:
            if readonly:
                self._conn = _connect_readonly(self.path)
            else:
                self._conn = sqlite3.connect(str(self.path), check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA journal_size_limit=67108864")  # log kept ≤ 64 MB
                self._conn.execute(_SCHEMA)
                self._conn.commit()
        except sqlite3.Error as e:
            raise StoreError(f"unreadable docstore {self.path}: {e}") from None

    # ------------------------------------------------------------------ writes

    def put(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        self.put_all([(key, val)], collection=collection)

    async def aput(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        self.put(key, val, collection)

    def put_all(
        self,
        kv_pairs: list[tuple[str, dict]],
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        rows = [(collection, k, _pack(v)) for k, v in kv_pairs]
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", rows)

    async def aput_all(
        self,
        kv_pairs: list[tuple[str, dict]],
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.put_all(kv_pairs, collection, batch_size)

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM kv WHERE collection = ? AND key = ?", (collection, key)
            )
        return cur.rowcount > 0

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return self.delete(key, collection)

    def commit(self) -> None:
        """Make every write so far durable and visible to readers."""
        with self._lock:
            self._conn.commit()

    def close(self) -> None:
        """Close the file; writes not committed are dropped. A writer folds its write-ahead
        log into the file first, so the file alone holds everything committed (the
        conversion of a JSON docstore renames it into place)."""
        with self._lock:
            if not self.readonly:
                self._conn.rollback()
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    # ------------------------------------------------------------------ reads

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM kv WHERE collection = ? AND key = ?", (collection, key)
            ).fetchone()
        return None if row is None else _unpack(row[0])

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        return self.get(key, collection)

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        return dict(self.items(collection))

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        return self.get_all(collection)

    def items(self, collection: str = DEFAULT_COLLECTION) -> Iterator[tuple[str, dict]]:
        """(key, value) of ``collection`` in key order, read in pages (constant memory)."""
        last = ""
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT key, value FROM kv WHERE collection = ? AND key > ? "
                    "ORDER BY key LIMIT 1000",
                    (collection, last),
                ).fetchall()
            for key, value in rows:
                yield key, _unpack(value)
            if len(rows) < 1000:
                return
            last = rows[-1][0]

    def keys(self, collection: str = DEFAULT_COLLECTION) -> list[str]:
        """The keys of ``collection`` in key order (no value read)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key FROM kv WHERE collection = ? ORDER BY key", (collection,)
            ).fetchall()
        return [str(k) for (k,) in rows]

    def count(self, collection: str = DEFAULT_COLLECTION) -> int:
        with self._lock:
            return int(
                self._conn.execute(
                    "SELECT count(*) FROM kv WHERE collection = ?", (collection,)
                ).fetchone()[0]
            )


def docstore_kv(docstore: Any) -> SqliteKVStore | None:
    """A LlamaIndex docstore's SQLite key-value store, or None for an in-memory docstore (a
    store that has none yet, or a reader of a JSON docstore of before)."""
    kv = getattr(docstore, "_kvstore", None)
    return kv if isinstance(kv, SqliteKVStore) else None


def iter_documents(docstore: Any) -> Iterator[Any]:
    """The docstore's documents in id order, read from its file a page at a time (an
    in-memory docstore: all at once)."""
    from llama_index.core.storage.docstore.utils import json_to_doc

    kv = docstore_kv(docstore)
    if kv is not None:
        for _, value in kv.items(docstore._node_collection):
            yield json_to_doc(value)
    else:
        yield from sorted(docstore.docs.values(), key=lambda d: d.id_)


def _pack(value: dict) -> bytes:
    return zlib.compress(json.dumps(value).encode("utf-8", "surrogatepass"), _LEVEL)


def _unpack(value: bytes | str) -> dict:
    if isinstance(value, bytes):
        value = zlib.decompress(value).decode("utf-8", "surrogatepass")
    return dict(json.loads(value))


def _connect_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise sqlite3.OperationalError("no such file")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM kv LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        # A write-ahead-log database on a read-only file system without its -shm file:
        # readable as an immutable file (the writer is not running there).
        conn.close()
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?immutable=1", uri=True, check_same_thread=False
        )
        conn.execute("SELECT count(*) FROM kv LIMIT 1").fetchone()
    return conn
