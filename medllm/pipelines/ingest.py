"""Ingestion: Documents → LlamaIndex IngestionPipeline (split → embed) → Chroma + docstore + BM25.

Idempotent and crash-safe:

* a persisted docstore keys documents by id and content hash (the semantics of LlamaIndex's
  ``DocstoreStrategy.UPSERTS``), so unchanged documents are skipped (not re-embedded) and a
  changed document's old chunks are deleted before its new ones are added; a document whose
  text is unchanged but whose metadata changed keeps its chunks and vectors, their metadata
  rewritten in place (``StoreWriter.restamp``);
* chunk ids are deterministic (``<doc id>#<n>``), and before a document that the docstore does
  not know is embedded, any chunks left in Chroma by an interrupted run are deleted;
* documents go through in batches; the docstore is saved atomically (a commit) before each
  batch's Chroma write, naming only documents whose chunks are in Chroma, and with the ids
  of the documents whose chunks are about to change in a journal beside it: the next writer
  deletes the chunks of journaled documents the saved docstore does not hold, so a process
  killed at any point loses at most the batch being written, which the next run redoes, and
  leaves no chunks behind even when the next run has other input;
* the BM25 index is brought up to date whenever it does not match the docstore (fingerprint):
  new and changed documents are indexed into a new segment, removed and replaced ones marked
  dead in theirs (:mod:`medllm.storage.bm25`);
* one writer at a time per store (file lock); a second writer gets a :class:`StoreError`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medllm.errors import DataError, StoreError
from medllm.pipelines import readers
from medllm.storage import filters, store

if TYPE_CHECKING:
    from llama_index.core import Document
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from medllm.config import Settings

logger = logging.getLogger(__name__)

# A collection of the docstore's SQLite file: ids of documents whose chunks in Chroma are about
# to change (written, restamped, deleted), saved before the change (see StoreWriter._journal).
JOURNAL = "medllm/chroma_journal"
# Documents per pipeline batch. The chunks of a batch reach the embedding model sorted by length
# (``_by_length``), so each of its batches of ``embed_batch_size`` texts is padded little; a
# bigger document batch sorts better: with both, the pipeline went from 0.77 to 0.86 of the bare
# encoder's speed (bench/RESULTS.md, issue 15).
DOCS_PER_BATCH = 256
# Token ids of the texts the splitter counted last, kept for the encoder (a pipeline batch of
# DOCS_PER_BATCH documents is counted, then embedded; long ones add their sentences).
_RECENT_IDS = 4096


@dataclass
class IngestSummary:
    store: str
    embedding: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    chunks: int = 0  # chunks embedded and written by this run
    # of the updated: text unchanged, only metadata (a moved file, a PubMed revision with new
    # MeSH terms): their chunks' metadata rewritten in place, nothing embedded again
    restamped: int = 0
    documents_total: int = 0  # documents in the store afterwards
    chunks_total: int = 0  # chunks in the store afterwards
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    # inputs that gave nothing to read (an empty file), shown as warnings
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _splitter(embed_model: BaseEmbedding, chunk_size: int, chunk_overlap: int) -> Any:
    """A SentenceSplitter counting tokens with the embedding model's own tokenizer."""
    from llama_index.core.node_parser import SentenceSplitter

    count = _token_counter(embed_model)
    return SentenceSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        tokenizer=count,
        id_func=lambda i, doc: store.chunk_id(doc.id_, i),
    )


def _token_counter(embed_model: BaseEmbedding) -> Any:
    """``text -> token ids`` with the embedding model's tokenizer, as the splitter counts them
    (no special tokens, no truncation); None when the model has no tokenizer (the splitter
    then counts with its default).

    A fast (Rust) tokenizer is called directly, on a copy without truncation or padding: the
    same ids as transformers' ``encode(text, add_special_tokens=False)`` (tested) at about a
    third of the cost, which is most of what splitting costs an ingestion. The ids of the
    texts it counted last are kept (``_RECENT_IDS`` of them) for an embedding model that can
    reuse them (ONNX: ``reuse_token_ids``): a chunk that is a whole abstract — most of them —
    was counted whole, so the encoder need not tokenise it again (~4 % of ingestion time)."""
    st = getattr(embed_model, "_model", None)  # HuggingFaceEmbedding's SentenceTransformer
    tok = getattr(st, "tokenizer", None) or getattr(embed_model, "hf_tokenizer", None)  # ONNX
    if tok is None:
        return None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        rust = Tokenizer.from_str(backend.to_str())
        rust.no_truncation()
        rust.no_padding()
        recent: collections.OrderedDict[str, list[int]] = collections.OrderedDict()

        def fast(text: str) -> list[int]:
            ids: list[int] = rust.encode(text, add_special_tokens=False).ids
            recent[text] = ids
            if len(recent) > _RECENT_IDS:
                recent.popitem(last=False)
            return ids

        reuse = getattr(embed_model, "reuse_token_ids", None)
        if reuse is not None:
            reuse(recent.get)
        return fast

    def slow(text: str) -> list[Any]:
        return list(tok.encode(text, add_special_tokens=False, verbose=False))

    return slow


def ingest_documents(
    settings: Settings,
    documents: Sequence[Document],
    *,
    rejected: Sequence[DataError] = (),
    where: Sequence[str | None] | None = None,
    text_field: str | Sequence[str] = "text",
    warnings: Sequence[str] = (),
    collection: str | None = None,
    embed_model: BaseEmbedding | None = None,
    batch_size: int = DOCS_PER_BATCH,
    show_progress: bool = True,
) -> IngestSummary:
    """Ingest Documents into the store for ``collection`` × ``settings.models.embedding``.

    ``where`` and ``text_field`` (see :func:`medllm.pipelines.readers.dedupe`) let a
    duplicate id be reported by file, record and the user's field; ``warnings`` (inputs
    that had no records) are kept in the summary. With no document to store (none given, or
    every one rejected) nothing is created: a :class:`DataError` says why."""
    t0 = time.perf_counter()
    ref = store.StoreRef.from_settings(settings, collection)
    uniq = readers.dedupe(documents, where, text_field=text_field)
    errors = [*rejected, *uniq.rejected]
    summary = IngestSummary(
        store=ref.name,
        embedding=ref.embedding,
        rejected=len(errors),
        errors=[str(e) for e in errors],
        warnings=list(warnings),
    )
    for e in [*errors, *warnings]:  # shown once, by the caller (the CLI prints the summary)
        logger.debug("%s", e)
    if not uniq.documents:
        also = "".join(f"; {w}" for w in warnings)
        if errors:
            raise DataError(
                f"nothing to ingest: {_all_rejected(len(errors))}, e.g. {errors[0]}"
                + ("" if len(errors) == 1 else f"; … and {len(errors) - 1} more")
                + also
                + "; nothing was stored"
            )
        raise DataError(f"nothing to ingest: no records{also}; nothing was stored")
    with StoreWriter(settings, ref, embed_model) as w:
        todo = w.classify(uniq.documents, summary)
        if todo:
            from tqdm.auto import tqdm

            with tqdm(
                total=len(todo),
                unit="doc",
                desc="loading the embedding model",
                disable=not show_progress,
            ) as bar:
                # loaded (and, the first time, exported to ONNX: ~20 s) before the clock starts,
                # so the bar says what the wait is and its rate is the ingestion's own
                w.prepare()
                bar.reset(total=len(todo))  # first: the new description shows a fresh clock
                bar.set_description("ingest")
                batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
                for i, batch in enumerate(batches):
                    upcoming = batches[i + 1] if i + 1 < len(batches) else None
                    summary.chunks += w.write(batch, upcoming=upcoming)
                    bar.update(len(batch))
        w.finish(summary, t0, show_progress=show_progress)
    return summary


def _all_rejected(n: int) -> str:
    return "the only record was rejected" if n == 1 else f"all {n:,} records were rejected"


class StoreWriter:
    """One store opened for writing: the writer's lock held, docstore and collection loaded.

    ``classify`` sorts documents into new / updated / unchanged, ``write`` embeds and stores a
    batch, ``delete`` removes documents, ``save`` persists the docstore (atomically) and
    ``finish`` updates the BM25 index when it no longer matches the docstore and writes the
    manifest.

    Chroma writes run on one background thread, one batch behind: while batch *i+1* is split
    and embedded, batch *i*'s chunks are written (its documents' old chunks deleted first), so
    the encoder is not idle during Chroma's inserts. At most one write is in flight; a batch
    holding a document still being written, a deletion and every docstore save wait for it,
    so the saved docstore never names a document whose chunks are not in Chroma.

    The docstore (one SQLite file, :mod:`medllm.storage.kvstore`) is saved — committed — by
    ``write`` before each batch's Chroma write, when the previous write is done anyway (so the
    encoder waits no longer), with the batch's ids journaled (:meth:`_forget`); after a kill,
    the next writer deletes the chunks of journaled documents the saved docstore does not hold
    (:meth:`_recover`).
    """

    def __init__(
        self, settings: Settings, ref: store.StoreRef, embed_model: BaseEmbedding | None = None
    ) -> None:
        self.settings = settings
        self.ref = ref
        self._embed = embed_model
        self._pipeline: Any = None  # split → longest first (may run on the splitter thread)
        self._embedder: Any = None  # embed → filter flags (on the caller's thread)
        self._split_pool: Any = None  # one thread: the next batch is split while one embeds
        self._next_split: tuple[tuple[str, ...], Any] | None = None  # (its ids, Future)
        self._dirty = False  # changes not yet saved
        self._lock: Any = None
        self._pool: Any = None  # one thread for Chroma writes
        self._pending: Any = None  # the write in flight (a Future)
        self._pending_ids: set[str] = set()
        self._chroma_max_batch: int | None = None
        self.docstore: Any = None
        self.coll: Any = None

    def __enter__(self) -> StoreWriter:
        from filelock import Timeout

        r = self.settings.retrieval
        lock = self.ref.lock()
        try:
            lock.acquire()
        except Timeout:
            raise StoreError(
                f"another process is writing to the store {self.ref.name} (lock "
                f"{self.ref.dir / '.lock'}); wait for it to finish and run this again"
            ) from None
        self._lock = lock
        try:
            _check_manifest(self.ref, r.chunk_size, r.chunk_overlap)
            self.docstore = store.load_docstore(self.ref, write=True)
            self.coll = store.get_collection(self.ref, create=True, ef_search=r.ef_search)
            # Filter flags (MeSH / publication type) are on every chunk only if they were on
            # from the store's first document.
            had = self.ref.exists() and store.read_manifest(self.ref).get("filters")
            self._recover()
            empty = store.docstore_count(self.docstore) == 0
            self.filters = filters.FLAGS_VERSION if (had or empty) else None
        except BaseException:
            if self.docstore is not None:
                store.close_docstore(self.docstore)
            lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._pending is not None and exc[0] is not None:
                try:  # already failing: finish the write in flight, report only the first error
                    self._pending.result()
                except Exception as e:
                    logger.warning("a Chroma write failed while stopping: %s", e)
                self._pending = None
            self._wait()
        finally:
            if self._split_pool is not None:
                self._split_pool.shutdown(wait=True, cancel_futures=True)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self.docstore is not None:
                store.close_docstore(self.docstore)  # what was not saved is dropped
            if self._lock is not None:
                self._lock.release()

    def _wait(self) -> None:
        """Wait for the Chroma write in flight (its error, if any, is raised here)."""
        if self._pending is not None:
            fut, self._pending = self._pending, None
            self._pending_ids = set()
            fut.result()

    def classify(self, docs: Sequence[Document], summary: IngestSummary) -> list[Document]:
        """The documents to embed (new, or changed text); counts new/updated/unchanged.

        A stored document whose text (and embedded metadata) is unchanged but whose other
        metadata changed — a JSONL file moved (``source_file``), a PubMed revision from an
        update file that adds MeSH terms — is not embedded again: :meth:`restamp` rewrites its
        chunks' metadata in place (vectors kept) and it is not among those returned."""
        todo: list[Document] = []
        same_text: list[Document] = []
        for d in docs:
            old = self.docstore.get_document_hash(d.id_)
            if old is None:
                summary.new += 1
                todo.append(d)
            elif old != d.hash:
                summary.updated += 1
                (same_text if self._same_chunks(d) else todo).append(d)
            else:
                summary.unchanged += 1
        if same_text:
            todo += self.restamp(same_text, summary)
        return todo

    def _same_chunks(self, d: Document) -> bool:
        """Whether ``d`` splits and embeds exactly as its stored version: same text, same
        metadata visible to the embedding and the splitter (readers exclude all of it)."""
        from llama_index.core.schema import MetadataMode

        old = self.docstore.get_document(d.id_, raise_error=False)
        return (
            old is not None
            and old.text == d.text
            and all(
                old.get_metadata_str(m) == d.get_metadata_str(m)
                for m in (MetadataMode.EMBED, MetadataMode.LLM)
            )
        )

    def restamp(self, docs: Sequence[Document], summary: IngestSummary) -> list[Document]:
        """Give the stored chunks of ``docs`` (text unchanged) their new metadata — the rows a
        fresh ingestion would write, keys that are gone removed — without embedding them again;
        the documents it could not (no chunks found, or rows in LlamaIndex's older format with a
        ``_node_content`` copy of the metadata) are returned, to be embedded."""
        self._wait()  # a write in flight may hold their chunks
        ids = [d.id_ for d in docs]
        got = self.coll.get(where={"document_id": {"$in": ids}}, include=["metadatas"])
        rows: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for cid, meta in zip(got["ids"], got["metadatas"], strict=True):
            rows.setdefault(str((meta or {}).get("document_id")), []).append((cid, meta or {}))
        redo: list[Document] = []
        done: list[Document] = []
        up_ids: list[str] = []
        up_meta: list[dict[str, Any]] = []
        for d in docs:
            mine = rows.get(d.id_)
            if not mine or any("_node_content" in m for _, m in mine):
                redo.append(d)
                continue
            new = chunk_metadata(d.id_, {**d.metadata, **filters.flag_metadata(d.metadata)})
            for cid, m in mine:
                up_ids.append(cid)
                up_meta.append({**dict.fromkeys(m), **new})  # None removes a key
            done.append(d)
        self._forget([d.id_ for d in done])  # before their rows change
        step = self._max_batch()
        for i in range(0, len(up_ids), step):
            self.coll.update(ids=up_ids[i : i + step], metadatas=up_meta[i : i + step])
        if done:
            self.docstore.set_document_hashes({d.id_: d.hash for d in done})
            self.docstore.add_documents(done, allow_update=True)
            self._dirty = True
        summary.restamped += len(done)
        return redo

    def prepare(self) -> None:
        """Load the embedding model and build the pipeline now (``write`` does on first use)."""
        self._get_pipeline()

    def _get_pipeline(self) -> Any:
        if self._pipeline is None:
            from llama_index.core.ingestion import IngestionPipeline

            from medllm.models import load_embedding

            r = self.settings.retrieval
            self._embed = self._embed or load_embedding(settings=self.settings)
            # The pipelines only transform (split → longest first, then embed → filter flags).
            # write() does what DocstoreStrategy.UPSERTS would (classify() already sorted
            # documents by id and content hash; old chunks are deleted before new ones are
            # added) because the Chroma write runs on the writer thread, outside the pipeline.
            # Two pipelines, so that the next batch can be split on the splitter thread while
            # this one is embedded: the encoder's two threads are the calling thread and one
            # of ONNX Runtime's, so splitting on the calling thread left a core idle (~1.5 ms
            # of CPU a document: 3 s of a 48 s ingestion of 2,000 abstracts, bench/RESULTS.md).
            self._pipeline = IngestionPipeline(
                transformations=[
                    _splitter(self._embed, r.chunk_size, r.chunk_overlap),
                    _by_length(),
                ],
                disable_cache=True,
            )
            self._embedder = IngestionPipeline(
                transformations=[self._embed, _flagger()], disable_cache=True
            )
        return self._pipeline

    def _split(self, batch: Sequence[Document]) -> list[Any]:
        """``batch``'s chunks, longest first: split ahead by :meth:`write`, or now."""
        ahead, self._next_split = self._next_split, None
        if ahead is not None and ahead[0] == tuple(d.id_ for d in batch):
            return ahead[1].result()  # type: ignore[no-any-return]
        if ahead is not None:
            ahead[1].cancel()  # not the batch split ahead: let it finish, unused
            with contextlib.suppress(Exception):  # its batch is not written: its error is moot
                ahead[1].result()
        return self._split_now(batch)

    def _split_now(self, batch: Sequence[Document]) -> list[Any]:
        return list(self._pipeline.run(documents=list(batch), show_progress=False))

    def _split_ahead(self, batch: Sequence[Document]) -> None:
        if self._split_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._split_pool = ThreadPoolExecutor(1, thread_name_prefix="medllm-split")
        docs = list(batch)
        self._next_split = (
            tuple(d.id_ for d in docs),
            self._split_pool.submit(self._split_now, docs),
        )

    def write(self, batch: Sequence[Document], upcoming: Sequence[Document] | None = None) -> int:
        """Embed and store ``batch`` (documents from :meth:`classify`); the chunks written.

        ``upcoming``: the batch the next call will write, split on the splitter thread while
        this one is embedded."""
        if not batch:
            return 0
        self._get_pipeline()
        ids = [d.id_ for d in batch]
        if self._pending_ids.intersection(ids):
            self._wait()
        split = self._split(batch)
        if upcoming:
            self._split_ahead(upcoming)
        nodes = self._embedder.run(nodes=split, show_progress=False)
        self._wait()  # one write in flight at most
        self._forget(ids)  # their chunks are about to be replaced: journaled, saved
        self.docstore.set_document_hashes({d.id_: d.hash for d in batch})
        self.docstore.add_documents(list(batch), allow_update=True)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="medllm-chroma")
        self._pending = self._pool.submit(self._store_chunks, ids, nodes)
        self._pending_ids = set(ids)
        self._dirty = True
        return len(nodes)

    def _forget(self, doc_ids: Sequence[str]) -> None:
        """Before the chunks of ``doc_ids`` in Chroma change: journal the ids, remove those the
        docstore holds (their old version), and save — so that the saved docstore never
        describes a version other than the chunks in Chroma, and the chunks of a run stopped
        before its next save are found by the next writer (:meth:`_recover`).

        Without it, a run stopped between a Chroma write and the docstore's save left chunks
        the docstore did not know (found by dense search ever after when the next run had other
        input) or the new version's chunks beside the old docstore entry (a re-run with the old
        file found it "unchanged" and kept them)."""
        if not doc_ids:
            return
        kv = self.docstore._kvstore
        kv.put_all([(i, {}) for i in doc_ids], collection=JOURNAL)
        for i in doc_ids:
            if self.docstore.get_document_hash(i) is not None:
                self.docstore.delete_document(i, raise_error=False)  # and its hash
        self._dirty = True
        self.save()

    def _recover(self) -> None:
        """Delete the chunks of journaled documents the saved docstore does not hold (a run
        stopped before its save), then clear the journal."""
        kv = self.docstore._kvstore
        ids = kv.keys(JOURNAL)
        lost = [i for i in ids if self.docstore.get_document_hash(i) is None]
        for n in range(0, len(lost), 1000):
            self.coll.delete(where={"document_id": {"$in": lost[n : n + 1000]}})
        if lost:
            logger.info("removed the chunks of %d documents a stopped run left", len(lost))
        self._clear_journal(ids)

    def _clear_journal(self, ids: Sequence[str]) -> None:
        kv = self.docstore._kvstore
        for i in ids:
            kv.delete(i, collection=JOURNAL)
        kv.commit()

    def _store_chunks(self, doc_ids: list[str], nodes: list[Any]) -> None:
        # Old chunks of these documents: a changed document's previous version, or leftovers
        # of an interrupted run for a new one. Removed first so nothing is duplicated.
        self.coll.delete(where={"document_id": {"$in": doc_ids}})
        if nodes:
            ids, embeddings, texts, metadatas = chroma_rows(nodes)
            step = self._max_batch()
            for i in range(0, len(ids), step):
                self.coll.add(
                    ids=ids[i : i + step],
                    embeddings=embeddings[i : i + step],
                    documents=texts[i : i + step],
                    metadatas=metadatas[i : i + step],
                )

    def _max_batch(self) -> int:
        if self._chroma_max_batch is None:
            try:
                self._chroma_max_batch = int(self.coll._client.get_max_batch_size())
            except Exception:  # an older client / server without the call
                self._chroma_max_batch = 1000
        return self._chroma_max_batch

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents (docstore entry, content hash and Chroma chunks); how many were
        stored."""
        held = [i for i in doc_ids if self.docstore.get_document_hash(i) is not None]
        if held:
            self._wait()
            self._forget(held)  # journaled, removed from the docstore, saved
            self.coll.delete(where={"document_id": {"$in": held}})
        return len(held)

    def save(self) -> None:
        """Persist the docstore (atomically) if anything changed since the last save, once the
        Chroma write in flight is done."""
        self._wait()
        if self._dirty:
            kv = self.docstore._kvstore
            for i in kv.keys(JOURNAL):  # documents stored: their chunks are in Chroma
                if self.docstore.get_document_hash(i) is not None:
                    kv.delete(i, collection=JOURNAL)
            store.save_docstore(self.ref, self.docstore)
            self._dirty = False

    def finish(self, summary: IngestSummary, t0: float, *, show_progress: bool = False) -> None:
        """Save the docstore, bring BM25 up to date, write the manifest, fill the totals."""
        r = self.settings.retrieval
        self.save()
        self._clear_journal(self.docstore._kvstore.keys(JOURNAL))  # every Chroma change done
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm.write
        store.build_bm25(self.ref, self.docstore, r.bm25_metadata_fields, progress=progress)
        summary.documents_total = store.docstore_count(self.docstore)
        summary.chunks_total = int(self.coll.count())
        summary.seconds = round(time.perf_counter() - t0, 3)
        ref = self.ref
        store.write_json_atomic(
            ref.dir / store.MANIFEST,
            {
                "store": ref.name,
                "collection": ref.collection,
                "embedding": ref.embedding,
                "chunk_size": r.chunk_size,
                "chunk_overlap": r.chunk_overlap,
                "chroma": f"{ref.chroma_host}:{ref.chroma_port}"
                if ref.chroma_host
                else str(ref.chroma_dir),
                "documents": summary.documents_total,
                "chunks": summary.chunks_total,
                "filters": self.filters,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )


def chroma_rows(
    nodes: Sequence[Any],
) -> tuple[list[str], list[list[float]], list[str], list[dict[str, Any]]]:
    """(ids, embeddings, texts, metadatas) of embedded chunks as medllm stores them in Chroma:
    the chunk's text as the document and its metadata (flat values; None stored as "", as
    LlamaIndex's ``ChromaVectorStore`` stores it) plus ``document_id``. Not LlamaIndex's
    ``_node_content`` JSON copy of each node and its other bookkeeping keys, which nothing
    reads (the retriever reads text and metadata; LlamaIndex's ``ChromaVectorStore`` reads such
    rows through its plain text + metadata path) and which cost a quarter of each insert
    (bench/RESULTS.md). Stores written before keep them; both read the same."""
    ids, embeddings, texts, metadatas = [], [], [], []
    for n in nodes:
        doc_id = n.ref_doc_id
        meta = chunk_metadata(doc_id, n.metadata)
        if n.embedding is None:
            raise StoreError(f"chunk {n.node_id} of document {doc_id} was not embedded")
        ids.append(n.node_id)
        embeddings.append(n.embedding)
        texts.append(n.get_content())
        metadatas.append(meta)
    return ids, embeddings, texts, metadatas


def _by_length() -> Any:
    """A transformation (before embedding) that puts a batch's chunks longest first.

    LlamaIndex's embedding step cuts the chunks into batches of ``embed_batch_size`` in the
    order it gets them, and every batch is padded to its longest text: in document order a
    batch of short chunks pays for one long one. Sorted, neighbours have about the same length
    (what sentence-transformers' ``encode`` and the bare encoder do to their input). Order
    does not matter after this point: chunk ids come from the splitter and every chunk names
    its document."""
    from llama_index.core.schema import MetadataMode, TransformComponent

    class ByLength(TransformComponent):
        def __call__(self, nodes: Any, **kwargs: Any) -> Any:
            embed = MetadataMode.EMBED
            return sorted(nodes, key=lambda n: -len(n.get_content(metadata_mode=embed)))

    return ByLength()


def chunk_metadata(doc_id: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A chunk's Chroma metadata: its document's (flat values, None stored as "") plus
    ``document_id``."""
    meta: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        if value is None:
            value = ""
        elif not isinstance(value, str | int | float | bool):
            raise StoreError(
                f"document {doc_id}: metadata field {key!r} is a {type(value).__name__}; "
                "Chroma stores only str, int, float or bool values (join lists with '; ')"
            )
        meta[key] = value
    meta["document_id"] = doc_id
    return meta


def _flagger() -> Any:
    """A transformation (after embedding) that adds the filter flag keys of
    :func:`medllm.storage.filters.flag_metadata` to each chunk's metadata (never embedded)."""
    from llama_index.core.schema import TransformComponent

    class FilterFlags(TransformComponent):
        def __call__(self, nodes: Any, **kwargs: Any) -> Any:
            for n in nodes:
                flags = filters.flag_metadata(n.metadata)
                if flags:
                    n.metadata = {**n.metadata, **flags}
                    n.excluded_embed_metadata_keys = [*n.excluded_embed_metadata_keys, *flags]
                    n.excluded_llm_metadata_keys = [*n.excluded_llm_metadata_keys, *flags]
            return nodes

    return FilterFlags()


# Beside a store whose first ingestion has not finished (no manifest yet): the chunking it
# began with, so that a re-run with other chunking cannot mix chunk sizes in one store.
CHUNKING = "chunking.json"


def _check_manifest(ref: store.StoreRef, chunk_size: int, chunk_overlap: int) -> None:
    if ref.exists():
        m = store.read_manifest(ref)
    else:
        started = ref.dir / CHUNKING
        if not started.is_file():
            started.write_text(
                json.dumps({"chunk_size": chunk_size, "chunk_overlap": chunk_overlap})
            )
            return
        try:
            m = dict(json.loads(started.read_text()))
        except (ValueError, TypeError) as e:
            raise StoreError(f"cannot read {started}: {e}; `medllm store drop` the store") from None
    if (m.get("chunk_size"), m.get("chunk_overlap")) != (chunk_size, chunk_overlap):
        raise StoreError(
            f"the store {ref.name} was built with chunk_size={m.get('chunk_size')} "
            f"chunk_overlap={m.get('chunk_overlap')}, not {chunk_size}/{chunk_overlap}; use "
            "the same chunking, another --collection, or `medllm store drop` first"
        )


def ingest_pubmedqa(
    settings: Settings,
    source: str | Path | None = None,
    *,
    collection: str | None = None,
    embed_model: BaseEmbedding | None = None,
    limit: int | None = None,
    max_chars: int = readers.MAX_DOC_CHARS,
    batch_size: int = DOCS_PER_BATCH,
    show_progress: bool = True,
) -> IngestSummary:
    """Ingest an official-schema PubMedQA file (a path, a URL, or None: the official PQA-L)."""
    from medllm.pubmedqa import remember_local_copy, resolve_source

    path = resolve_source(source, settings.paths.data_dir)
    res = readers.read_pubmedqa(path, max_chars=max_chars)
    docs = res.documents[:limit] if limit else res.documents
    summary = ingest_documents(
        settings,
        docs,
        rejected=res.rejected,
        text_field=res.text_field,
        collection=collection,
        embed_model=embed_model,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    if source is not None and not str(source).startswith(("http://", "https://")):
        remember_local_copy(path, settings.paths.data_dir)  # evals then read these files
    return summary


FileFormat = Literal["jsonl", "csv", "dir"]


def _guess_format(path: Path) -> FileFormat:
    if path.is_dir() or path.suffix.lower() in readers.DIR_EXTS:
        return "dir"
    if path.suffix.lower() == ".csv":
        return "csv"
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise DataError(
        "cannot tell the format from the name (.jsonl/.ndjson/.json, .csv, .txt/.md/.pdf, or a "
        "folder); pass --format jsonl|csv",
        path=path,
    )


def ingest_files(
    settings: Settings,
    paths: Sequence[str | Path],
    *,
    format: FileFormat | None = None,
    id_field: str = "id",
    text_field: str = "text",
    metadata_fields: Sequence[str] | None = None,
    collection: str | None = None,
    embed_model: BaseEmbedding | None = None,
    max_chars: int = readers.MAX_DOC_CHARS,
    batch_size: int = DOCS_PER_BATCH,
    show_progress: bool = True,
) -> IngestSummary:
    """Ingest JSONL/CSV files (configurable id/text/metadata fields) or .txt/.md/.pdf dirs."""
    docs: list[Document] = []
    where: list[str | None] = []
    fields: list[str] = []
    rejected: list[DataError] = []
    empty: list[str] = []
    for p in map(Path, paths):
        # absolute (not resolved: a link keeps its name): a folder's files are keyed by path,
        # and `papers/a.txt` read from another directory, or as /home/me/papers/a.txt, is
        # the same file, not a second document
        p = Path(os.path.abspath(p.expanduser()))
        if not p.exists():
            raise DataError("no such file or directory", path=p)
        fmt = format or _guess_format(p)
        if fmt == "dir":  # a folder, or one .txt/.md/.pdf file
            res = readers.read_dir(p, max_chars=max_chars)
        elif fmt == "csv":
            res = readers.read_csv(
                p,
                id_field=id_field,
                text_field=text_field,
                metadata_fields=metadata_fields,
                max_chars=max_chars,
            )
        else:
            res = readers.read_jsonl(
                p,
                id_field=id_field,
                text_field=text_field,
                metadata_fields=metadata_fields,
                max_chars=max_chars,
            )
        if not res.documents and not res.rejected:
            empty.append(str(p))
        docs += res.documents
        where += res.where if len(res.where) == len(res.documents) else [None] * len(res.documents)
        fields += [res.text_field] * len(res.documents)
        rejected += res.rejected
    warnings = [f"{f}: no records in this file (empty, or blank lines only)" for f in empty]
    if empty and not docs and not rejected:  # no input had a record: no store either
        if len(empty) == 1:
            raise DataError(
                "nothing to ingest: no records in this file (empty, or blank lines only); "
                "nothing was stored",
                path=empty[0],
            )
        raise DataError(f"nothing to ingest: no records in {', '.join(empty)}; nothing was stored")
    return ingest_documents(
        settings,
        docs,
        rejected=rejected,
        where=where,
        text_field=fields,
        warnings=warnings,
        collection=collection or settings.retrieval.collection,
        embed_model=embed_model,
        batch_size=batch_size,
        show_progress=show_progress,
    )
