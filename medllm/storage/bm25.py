"""BM25 in segments: an index that an ingestion updates instead of rebuilding.

Layout (``stores/<name>/bm25/``)::

    medllm.json            the manifest: format, fingerprint, BM25 text options, segments
    s<gen>-<n>/            one immutable segment (documents indexed together)
        vocab.bin          its terms, sorted by their UTF-8 bytes, concatenated
        vocab_off.npy      int64 offsets of each term in vocab.bin (terms + 1)
        indptr.npy         int64: term t's postings are [indptr[t], indptr[t + 1])
        docs.npy           int32: the document (its number in the segment) of each posting
        tf.npy             float32: the term's count in that document
        doclen.npy         int32: each document's length in tokens
        digests.npy        uint64: each document's content hash, digested (change detection)
        medllm_ids.json    document ids in segment order
        medllm_cols.npz    filter columns: years, MeSH / publication-type postings
        dead-<gen>.npy     int32: documents removed or replaced since (when any)

A segment stores raw term counts, not scores: the statistics that BM25 takes from the whole
corpus (document count, document frequency of each term, average length) are computed over
the live documents of all segments when a query process opens the index (lengths) or scores a
query (document frequencies of its terms). Scores are therefore those of one index built over
the same documents — equal bit for bit to ``bm25s`` (method ``lucene``, k1 1.5, b 0.75, the
float32 arithmetic it uses), which built medllm's single-file index before.

An ingestion that adds, changes or removes documents writes the new and changed ones into a
new segment and marks the replaced and removed ones dead in theirs; nothing else is tokenised or
rewritten. Segments below half of :data:`SEGMENT_DOCS` live documents (or over 30 % dead) are
merged once there are more than :data:`MAX_SMALL` of them. A full build writes segments of
:data:`SEGMENT_DOCS` documents, so building holds one segment's tokens at a time. Every file is
written before the manifest that names it is replaced (atomically); a query process reads only
what the manifest names, so it never sees a half-written update, and a killed update leaves
files that the next one removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import StoreError
from medllm.fsutil import write_json_atomic

if TYPE_CHECKING:
    import numpy as np

    from medllm.storage import filters

logger = logging.getLogger(__name__)

FORMAT = "seg1"
MANIFEST = "medllm.json"
IDS = "medllm_ids.json"
COLS = "medllm_cols.npz"
# LlamaIndex BM25Retriever's default token pattern: every index is built (and queried) with it.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
K1, B = 1.5, 0.75  # bm25s' defaults (method "lucene"), which medllm's indexes always used
SEGMENT_DOCS = 200_000  # documents a build writes into one segment (bounds its memory)
MAX_SMALL = 4  # small segments allowed before they are merged
DEAD_SHARE = 0.3  # a segment with more dead documents than this counts as small
_TOKENIZE_BATCH = 2_000

# (id, content hash, BM25 text, metadata) of one document to index
Doc = tuple[str, str, str, dict[str, Any]]


def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def _bm25s() -> Any:
    import bm25s

    # bm25s sets its own logger to DEBUG when imported; follow the application's level.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def query_tokens(query: str, stemmer: Any = None) -> list[str]:
    """``query``'s BM25 terms, as the index's documents were tokenised (bm25s: lower case,
    :data:`TOKEN_PATTERN`, English stopwords out, Snowball stems), repeats kept."""
    tokens = _bm25s().tokenize(
        query,
        stopwords="en",
        stemmer=stemmer or _stemmer(),
        token_pattern=TOKEN_PATTERN,
        return_ids=False,
        show_progress=False,
    )[0]
    return [str(t) for t in tokens]


def digest(doc_hash: str) -> int:
    """A document's content hash as 64 bits (what a segment keeps to detect a change)."""
    return int.from_bytes(hashlib.blake2b(doc_hash.encode(), digest_size=8).digest(), "little")


def text(doc: Any, metadata_fields: Sequence[str] = ()) -> str:
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


def write_columns(path: Path, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """The side files a query process reads instead of the BM25 corpus (which holds every
    document's text): ids in corpus order, years, and term → documents postings for the
    MeSH / publication-type filters (:mod:`medllm.storage.filters`)."""
    import numpy as np

    from medllm.storage import filters

    (path / IDS).write_text(json.dumps([i for i, _ in docs]))
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
    with open(path / COLS, "wb") as fh:
        np.savez(fh, **cols)


# ----------------------------------------------------------------------------- writing


def write_segment(path: Path, docs: Sequence[Doc], stemmer: Any = None) -> None:
    """One segment at ``path`` (a new directory) over ``docs``."""
    import numpy as np

    bm25s = _bm25s()
    stemmer = stemmer or _stemmer()
    vocab: dict[str, int] = {}
    terms_parts: list[np.ndarray] = []
    docs_parts: list[np.ndarray] = []
    tf_parts: list[np.ndarray] = []
    doclen = np.zeros(len(docs), dtype=np.int32)
    for start in range(0, len(docs), _TOKENIZE_BATCH):
        batch = docs[start : start + _TOKENIZE_BATCH]
        tok = bm25s.tokenize(
            [d[2] for d in batch],
            stopwords="en",
            stemmer=stemmer,
            token_pattern=TOKEN_PATTERN,
            return_ids=True,
            show_progress=False,
        )
        by_id = sorted(tok.vocab.items(), key=lambda kv: kv[1])
        remap = np.asarray([vocab.setdefault(t, len(vocab)) for t, _ in by_id], dtype=np.int32)
        for n, ids in enumerate(tok.ids):
            doclen[start + n] = len(ids)
            if not ids:
                continue
            t, c = np.unique(remap[np.asarray(ids, dtype=np.int64)], return_counts=True)
            terms_parts.append(t)
            tf_parts.append(c.astype(np.float32))
            docs_parts.append(np.full(len(t), start + n, dtype=np.int32))
    words = sorted(vocab, key=lambda w: w.encode("utf-8", "surrogatepass"))
    rank = np.empty(len(vocab), dtype=np.int64)
    rank[[vocab[w] for w in words]] = np.arange(len(words))
    if terms_parts:
        terms = rank[np.concatenate(terms_parts)]
        order = np.argsort(terms, kind="stable")  # by term, then document (appended in order)
        post_docs = np.concatenate(docs_parts)[order]
        post_tf = np.concatenate(tf_parts)[order]
        counts = np.bincount(terms, minlength=len(words))
        del terms, order
    else:
        post_docs = np.zeros(0, dtype=np.int32)
        post_tf = np.zeros(0, dtype=np.float32)
        counts = np.zeros(len(words), dtype=np.int64)
    del terms_parts, docs_parts, tf_parts
    encoded = [w.encode("utf-8", "surrogatepass") for w in words]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    path.mkdir(parents=True)
    (path / "vocab.bin").write_bytes(b"".join(encoded))
    np.save(path / "vocab_off.npy", offsets)
    np.save(path / "indptr.npy", np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]))
    np.save(path / "docs.npy", post_docs.astype(np.int32, copy=False))
    np.save(path / "tf.npy", post_tf.astype(np.float32, copy=False))
    np.save(path / "doclen.npy", doclen)
    np.save(path / "digests.npy", np.asarray([digest(d[1]) for d in docs], dtype=np.uint64))
    write_columns(path, [(d[0], d[3]) for d in docs])


@dataclass
class _SegState:
    """What the writer knows of one segment (from the manifest and its small files)."""

    name: str
    docs: int
    dead_file: str | None = None
    dead: set[int] = field(default_factory=set)

    @property
    def live(self) -> int:
        return self.docs - len(self.dead)

    def small(self) -> bool:
        return self.live < SEGMENT_DOCS // 2 or len(self.dead) > DEAD_SHARE * self.docs


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def is_segmented(path: Path) -> bool:
    m = read_manifest(path)
    return m is not None and m.get("format") == FORMAT


SEGMENT_FILES = ("vocab.bin", "vocab_off.npy", "indptr.npy", "docs.npy", "tf.npy", "doclen.npy",
                 "digests.npy", IDS, COLS)  # fmt: skip


def intact(path: Path) -> bool:
    """Whether every file the segmented index's manifest names is there (a damaged index is
    rebuilt by the next ingestion)."""
    m = read_manifest(path)
    if m is None or m.get("format") != FORMAT:
        return False
    for seg in m.get("segments", []):
        d = path / str(seg.get("name"))
        if not all((d / f).is_file() for f in SEGMENT_FILES):
            return False
        if seg.get("dead") and not (d / str(seg["dead"])).is_file():
            return False
    return True


def _docstore_hashes(docstore: Any) -> dict[str, str]:
    """doc id → content hash of every document in ``docstore`` ("" for one without a recorded
    hash). Read from its rows, not ``get_all_document_hashes``, whose hash → id map folds
    documents of equal content; ids with a hash but no document are not documents."""
    from medllm.storage.kvstore import docstore_kv

    meta, data = docstore._metadata_collection, docstore._node_collection
    kv = docstore_kv(docstore)
    if kv is not None:
        rows, ids = kv.items(meta), kv.keys(data)
    else:
        rows, ids = docstore._kvstore.get_all(meta).items(), docstore._kvstore.get_all(data)
    hashes = {str(k): str(v.get("doc_hash", "")) for k, v in rows}
    return {str(i): hashes.get(str(i), "") for i in ids}


def update(
    path: Path,
    docstore: Any,
    metadata_fields: Sequence[str],
    fingerprint: str,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Bring the segmented index at ``path`` in line with ``docstore``; what it did.

    Only documents that are new or changed are tokenised (into a new segment); removed and
    replaced ones are marked dead in their segment. The index is built whole (in segments)
    when there is none, when it is in an older format or damaged (a file it names is
    missing), or when ``metadata_fields`` changed.
    """
    import numpy as np

    t0 = time.perf_counter()
    manifest = read_manifest(path)
    fields = list(metadata_fields)
    if (
        manifest is None
        or manifest.get("format") != FORMAT
        or manifest.get("metadata_fields") != fields
        or not intact(path)
    ):
        n = build(path, docstore, fields, fingerprint, progress=progress)
        return {"added": n, "removed": 0, "merged": 0, "full": 1}
    gen = int(manifest.get("generation", 0)) + 1
    try:
        segs = [
            _SegState(s["name"], int(s["docs"]), s.get("dead"))
            for s in manifest.get("segments", [])
        ]
        indexed: dict[str, tuple[int, int, int]] = {}  # live id -> (segment, number, digest)
        for k, seg in enumerate(segs):
            d = path / seg.name
            if seg.dead_file:
                seg.dead = set(np.load(d / seg.dead_file).tolist())
            ids = json.loads((d / IDS).read_text())
            digs = np.load(d / "digests.npy")
            for n, (i, g) in enumerate(zip(ids, digs.tolist(), strict=True)):
                if n not in seg.dead:
                    indexed[str(i)] = (k, n, int(g))
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("BM25 index %s is damaged (%s); building it again", path, e)
        n = build(path, docstore, fields, fingerprint, progress=progress)
        return {"added": n, "removed": 0, "merged": 0, "full": 1}
    _clean(path, segs)  # what a killed update left
    current = _docstore_hashes(docstore)
    added = sorted(i for i, h in current.items() if i not in indexed or indexed[i][2] != digest(h))
    added_set = set(added)
    removed = [v for i, v in indexed.items() if i not in current or i in added_set]
    changed = {k for k, _, _ in removed}
    for k, n, _ in removed:
        segs[k].dead.add(n)
    keep = [s for s in segs if s.live > 0]
    small = [s for s in keep if s.small()]
    parts = list(_parts(added, SEGMENT_DOCS))
    merged = 0
    if len(small) + sum(len(p) < SEGMENT_DOCS // 2 for p in parts) > MAX_SMALL:
        # the small segments and the new documents are written together, as new segments
        merged = sum(s.live for s in small)
        if progress:
            progress(f"BM25: merging {len(small)} small segments ({_docs(merged)})")
        names = {s.name for s in small}
        keep = [s for s in keep if s.name not in names]
        ids = sorted({*added, *(i for s in small for i in _live_ids(path / s.name, s.dead))})
        parts = list(_parts(ids, SEGMENT_DOCS))
    new: list[_SegState] = []
    try:
        for j, part in enumerate(parts):
            name = f"s{gen:06d}-{j}"
            write_segment(path / name, _fetch(docstore, part, fields, current))
            new.append(_SegState(name, len(part)))
            if progress:
                progress(f"BM25: {_docs(len(part))} indexed into segment {name}")
        for s in keep:
            if segs.index(s) in changed and s.dead:
                s.dead_file = f"dead-{gen:06d}.npy"
                np.save(path / s.name / s.dead_file, np.asarray(sorted(s.dead), dtype=np.int32))
        final = keep + new
        _write_manifest(path, final, fields, fingerprint, gen)
    except BaseException:
        for s in new:
            shutil.rmtree(path / s.name, ignore_errors=True)
        raise
    _clean(path, final)
    logger.info(
        "BM25 %s: %d added, %d removed, %d merged, %d segments (%.1f s)",
        path, len(added), len(removed), merged, len(final), time.perf_counter() - t0,
    )  # fmt: skip
    return {"added": len(added), "removed": len(removed), "merged": merged, "full": 0}


def build(
    path: Path,
    docstore: Any,
    metadata_fields: Sequence[str],
    fingerprint: str,
    *,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Build the index at ``path`` whole from ``docstore`` (written beside it, then swapped
    in), :data:`SEGMENT_DOCS` documents a segment; how many documents it holds."""
    from medllm.storage.kvstore import iter_documents

    fields = list(metadata_fields)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    segs: list[_SegState] = []
    batch: list[Doc] = []
    total = 0

    def flush() -> None:
        name = f"s000000-{len(segs)}"
        write_segment(tmp / name, batch)
        segs.append(_SegState(name, len(batch)))
        if progress:
            progress(f"BM25: {_docs(total)} indexed")
        batch.clear()

    hashes = _docstore_hashes(docstore)
    for d in iter_documents(docstore):
        h = hashes.get(d.id_, "")
        batch.append((d.id_, h, text(d, fields), d.metadata or {}))
        total += 1
        if len(batch) >= SEGMENT_DOCS:
            flush()
    if batch:
        flush()
    _write_manifest(tmp, segs, fields, fingerprint, 0)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return total


def _docs(n: int) -> str:
    """``1 document``, ``2 documents`` (progress messages)."""
    return f"{n:,} document" if n == 1 else f"{n:,} documents"


def _parts(ids: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _fetch(
    docstore: Any, ids: list[str], fields: Sequence[str], hashes: dict[str, str]
) -> list[Doc]:
    """The documents ``ids`` to index, with the content hash the docstore records."""
    out: list[Doc] = []
    for i in ids:
        d = docstore.get_document(i, raise_error=True)
        out.append((d.id_, hashes[i], text(d, fields), d.metadata or {}))
    return out


def _live_ids(seg: Path, dead: set[int]) -> list[str]:
    ids = json.loads((seg / IDS).read_text())
    return [str(i) for n, i in enumerate(ids) if n not in dead]


def _write_manifest(
    path: Path, segs: Sequence[_SegState], fields: list[str], fingerprint: str, gen: int
) -> None:
    write_json_atomic(
        path / MANIFEST,
        {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "docs": sum(s.live for s in segs),
            "metadata_fields": fields,
            "generation": gen,
            "k1": K1,
            "b": B,
            "segments": [{"name": s.name, "docs": s.docs, "dead": s.dead_file} for s in segs],
        },
    )


def _clean(path: Path, segs: Sequence[_SegState]) -> None:
    """Remove what the manifest no longer names: merged segments, older dead lists, and the
    leftovers of an update that was killed."""
    names = {s.name: s for s in segs}
    for d in path.iterdir():
        if d.is_dir():
            if d.name not in names:
                shutil.rmtree(d, ignore_errors=True)
                continue
            for f in d.glob("dead-*.npy"):
                if f.name != names[d.name].dead_file:
                    f.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reading


class _Segment:
    """One segment opened for queries: its postings read a term at a time (:class:`_RawArray`),
    its vocabulary and term offsets memory-mapped and searched in place (nothing of it is held
    in memory but the document lengths and the live flags)."""

    def __init__(self, path: Path, docs: int, dead_file: str | None) -> None:
        import mmap

        import numpy as np

        self.path = path
        with open(path / "vocab.bin", "rb") as fh:  # searched in place, page by page
            size = os.fstat(fh.fileno()).st_size
            self.vocab: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.off = memoryview(np.load(path / "vocab_off.npy", mmap_mode="r"))
        self.indptr = np.load(path / "indptr.npy", mmap_mode="r")
        self.docs_file = _RawArray(path / "docs.npy", np.dtype(np.int32))
        self.tf_file = _RawArray(path / "tf.npy", np.dtype(np.float32))
        self.doclen = np.load(path / "doclen.npy")
        if len(self.doclen) != docs:
            raise StoreError(f"BM25 segment {path} holds {len(self.doclen)} documents, not {docs}")
        self.dead = (
            np.load(path / dead_file) if dead_file else np.zeros(0, dtype=np.int32)
        ).astype(np.int64)
        self.live = np.ones(docs, dtype=bool)
        self.live[self.dead] = False
        self.n_terms = len(self.off) - 1

    def find(self, word: bytes) -> int:
        """The term number of ``word``, or -1 (binary search over the sorted vocabulary)."""
        vocab, off = self.vocab, self.off
        lo, hi = 0, self.n_terms
        while lo < hi:
            mid = (lo + hi) // 2
            if vocab[off[mid] : off[mid + 1]] < word:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < self.n_terms and vocab[off[lo] : off[lo + 1]] == word else -1

    def postings(self, word: bytes) -> tuple[np.ndarray, np.ndarray] | None:
        t = self.find(word)
        if t < 0:
            return None
        s, e = int(self.indptr[t]), int(self.indptr[t + 1])
        return self.docs_file.read(s, e), self.tf_file.read(s, e)


class _RawArray:
    """A 1-D ``.npy`` file read a slice at a time with ``pread``: the slice is copied into a
    buffer that the query drops (the file stays in the page cache, not in the process: a
    memory map would keep every page a query touched, and its neighbours, in the process's
    resident set)."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        import numpy as np

        self.fh = open(path, "rb", buffering=0)  # noqa: SIM115  (held while the index is open)
        fmt = np.lib.format
        version = fmt.read_magic(self.fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, got = read(self.fh)
        if got != dtype or len(shape) != 1:
            raise StoreError(f"BM25 file {path}: {got} {shape}, expected 1-D {dtype}")
        self.start = self.fh.tell()
        self.dtype = dtype
        self.size = int(shape[0])

    def read(self, s: int, e: int) -> np.ndarray:
        import numpy as np

        n = (e - s) * self.dtype.itemsize
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = os.preadv(
                self.fh.fileno(), [view[got:]], self.start + s * self.dtype.itemsize + got
            )
            if k <= 0:
                raise StoreError(f"BM25 file {self.fh.name} ends early")
            got += k
        return np.frombuffer(buf, dtype=self.dtype)


class SegmentedIndex:
    """A segmented BM25 index opened for queries (the interface ``Retriever`` uses).

    ``ids[i]`` is the document at position ``i`` of every score array (segments one after
    another; dead positions included, always scored 0)."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        manifest = read_manifest(path)
        if manifest is None or manifest.get("format") != FORMAT:
            raise StoreError(f"no segmented BM25 index at {path}")
        self.path = path
        self.stemmer = _stemmer()
        self.segments: list[_Segment] = []
        self.offsets: list[int] = []
        self.ids: list[str] = []
        cols: list[dict[str, Any]] = []
        pos = 0
        for s in manifest.get("segments", []):
            seg = _Segment(path / s["name"], int(s["docs"]), s.get("dead"))
            ids = json.loads((seg.path / IDS).read_text())
            with np.load(seg.path / COLS, allow_pickle=False) as z:
                cols.append({k: z[k] for k in z.files})
            self.segments.append(seg)
            self.offsets.append(pos)
            self.ids.extend(str(i) for i in ids)
            pos += len(ids)
        self._cols = cols
        self.size = pos
        self.live = (
            np.concatenate([s.live for s in self.segments])
            if self.segments
            else np.zeros(0, dtype=bool)
        )
        self.num_docs = int(self.live.sum())
        self.dead_positions = np.flatnonzero(~self.live)
        self._doclen = (
            np.concatenate([s.doclen for s in self.segments]).astype(np.float64)
            if self.segments
            else np.zeros(0)
        )
        self.set_params(K1, B)

    def set_params(self, k1: float, b: float) -> None:
        """BM25's k1 and b (the index stores counts, so these are query-time choices; the
        shipped values are bm25s' defaults, :data:`K1`, :data:`B`)."""
        import numpy as np

        self.k1, self.b = k1, b
        total = int(self._doclen[self.live].sum()) if self.num_docs else 0
        avgdl = total / self.num_docs if self.num_docs else 1.0
        # bm25s: tf / (k1 * ((1 - b) + b * l_d / l_avg) + tf), in float64
        self._norm = k1 * ((1 - b) + b * self._doclen / np.float64(avgdl))

    def positions(self) -> dict[str, int]:
        """Live document id → position."""
        return {i: n for n, i in enumerate(self.ids) if self.live[n]}

    def _postings(self, word: bytes) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
        """(segment number, documents, term counts, how many of them live) of ``word``'s
        postings, segment by segment (removed documents included)."""
        import numpy as np

        for k, seg in enumerate(self.segments):
            p = seg.postings(word)
            if p is None or not len(p[0]):
                continue
            live = int(np.count_nonzero(seg.live[p[0]])) if len(seg.dead) else len(p[0])
            yield k, p[0], p[1], live

    def df(self, word: str) -> int:
        """How many live documents hold ``word`` (a stemmed term)."""
        return sum(p[3] for p in self._postings(word.encode("utf-8", "surrogatepass")))

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every position for a query's terms (repeats count again, as in
        bm25s); float32, summed term by term in query order; removed documents score 0.

        Per posting, as bm25s computes it when it builds its index: ``idf · tf / (norm + tf)``
        in float64 (``idf`` rounded to float32 first, ``norm`` = k1·(1 − b + b·len/avglen)),
        rounded to float32, added to the document's score."""
        import numpy as np

        out = np.zeros(self.size, dtype=np.float32)
        n = self.num_docs
        for word in tokens:
            parts = list(self._postings(word.encode("utf-8", "surrogatepass")))
            df = sum(p[3] for p in parts)
            if not df:
                continue
            idf = np.float64(np.float32(math.log(1 + (n - df + 0.5) / (df + 0.5))))
            for k, docs, tf, _ in parts:
                off, size = self.offsets[k], len(self.segments[k].doclen)
                at = docs.astype(np.intp)
                den = np.take(self._norm[off : off + size], at)  # the norms of these documents
                den += tf
                np.divide(tf, den, out=den)
                den *= idf
                np.add.at(out[off : off + size], at, den.astype(np.float32))
        out[self.dead_positions] = 0.0
        return out

    def mask(self, w: filters.Where) -> np.ndarray:
        """0/1 float32 weights of the positions whose documents pass ``w`` (and are live)."""
        import numpy as np

        from medllm.storage import filters

        parts = [
            filters.mask_columns(w, c, len(s.doclen))
            for c, s in zip(self._cols, self.segments, strict=True)
        ]
        m = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return (m * self.live).astype(np.float32)


def open_index(path: Path, retries: int = 3) -> SegmentedIndex:
    """Open the segmented index at ``path``; retried when an update replaced it meanwhile."""
    for attempt in range(retries):
        try:
            return SegmentedIndex(path)
        except (OSError, ValueError) as e:
            if attempt == retries - 1:
                raise StoreError(
                    f"the BM25 index at {path} is damaged ({e}); run the ingestion again to "
                    "rebuild it"
                ) from None
            time.sleep(0.05)
    raise AssertionError("unreachable")
