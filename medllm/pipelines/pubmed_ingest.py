"""``medllm ingest pubmed``: MEDLINE/PubMed XML files into a store, resumable across files.

Files are applied in NLM order (:func:`medllm.pipelines.pubmed_xml.find_files`), each streamed
in batches through the same :class:`~medllm.pipelines.ingest.StoreWriter` as the other
ingestions (so unchanged abstracts are never embedded twice). Per file:

* a citation whose abstract changed replaces the stored one (its chunks are deleted first);
* ``DeleteCitation`` PMIDs, and citations whose newer version has no abstract, are removed
  from Chroma, the docstore and (at the end of the run) the BM25 index;
* a citation from a file that orders *before* the file the stored version came from (or before
  the file that deleted it) is skipped as superseded, so re-running an old file never brings
  back an outdated abstract;
* bad records are reported by file, record number and PMID and skipped.

When a file has been read to its end, the docstore is saved and the file is recorded in
``pubmed_files.json`` in the store's directory (with its size); a re-run skips recorded files of
the same size. A file that breaks off (truncated ``.gz``) keeps what it stored, is not
recorded, is reported, and the run goes on with the next file; after replacing the file, a
re-run reads it again (abstracts stored the first time are not re-embedded). The BM25 index is
rebuilt once, at the end of the run. A run that leaves a new store empty (every file failed, or
none had an abstract) removes it and raises a :class:`DataError` naming each file's error.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import DataError
from medllm.pipelines import pubmed_xml as px
from medllm.pipelines.ingest import DOCS_PER_BATCH, IngestSummary, StoreWriter
from medllm.pipelines.readers import MAX_DOC_CHARS, plural
from medllm.storage import store

if TYPE_CHECKING:
    from llama_index.core import Document
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from medllm.config import Settings

logger = logging.getLogger(__name__)

STATE = "pubmed_files.json"


@dataclass
class PubmedSummary(IngestSummary):
    files: int = 0  # files read to their end by this run
    files_skipped: int = 0  # completed by an earlier run
    files_failed: list[str] = field(default_factory=list)  # one error per file that broke off
    deleted: int = 0  # stored documents removed (DeleteCitation or newer version w/o abstract)
    no_abstract: int = 0  # citations without an abstract (not indexed)
    superseded: int = 0  # citations older than the stored (or deleted) version: skipped


def _load_state(ref: store.StoreRef) -> dict[str, Any]:
    path = ref.dir / STATE
    if not path.is_file():
        return {"files": {}, "deleted": {}}
    try:
        data = json.loads(path.read_text())
        return {"files": dict(data["files"]), "deleted": dict(data["deleted"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"unreadable ingestion state ({e}); delete it to re-read every file", path=path
        ) from None


def _newer(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    """Whether order key ``a`` is strictly after ``b`` (unknown orders never are)."""
    return a is not None and b is not None and a > b


def _key(file_name: str | None, version: int = 1) -> tuple[int, int, int] | None:
    order = px.file_order(Path(file_name)) if file_name else None
    return (*order, version) if order else None


def _tty() -> bool:
    """Whether progress bars go to a terminal (nested bars move the cursor: elsewhere they
    leave escape codes such as ``ESC[A`` in the output)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _pending(state: dict[str, Any], path: Path) -> bool:
    """Whether ``path`` is still to be read (not recorded as read to its end at this size)."""
    done = state["files"].get(path.name)
    return not (done and done.get("size") == path.stat().st_size)


class _FileRun:
    """Applies one file's events to the store in batches.

    A full batch is classified and *staged*: it is written when the next one is full, so that
    the writer splits the next batch on its splitter thread while this one is embedded
    (:meth:`StoreWriter.write`'s ``upcoming``). The staged batch is written first whenever
    anything could depend on it being stored: a record or a deletion of one of its PMIDs, and
    the end of the file (:meth:`flush` with ``final``)."""

    def __init__(
        self, w: StoreWriter, state: dict[str, Any], path: Path, s: PubmedSummary, batch: int
    ) -> None:
        self.w, self.state, self.path, self.s, self.batch_size = w, state, path, s, batch
        self.pending: dict[str, Document] = {}
        self.staged: list[Document] = []  # classified, written at the next flush
        self._staged_ids: set[str] = set()

    def stored_key(self, pmid: str) -> tuple[int, int, int] | None:
        doc = self.w.docstore.get_document(pmid, raise_error=False)
        if doc is not None:
            meta = doc.metadata or {}
            return _key(meta.get("file"), int(meta.get("pmid_version", 1)))
        gone = self.state["deleted"].get(pmid)
        return _key(gone, 1 << 30) if gone else None

    def article(self, a: px.Article) -> None:
        if a.pmid in self._staged_ids:
            self._write_staged()  # its stored version is the one to compare with
        mine = _key(self.path.name, a.version)
        if _newer(self.stored_key(a.pmid), mine):
            self.s.superseded += 1
            return
        self.state["deleted"].pop(a.pmid, None)
        self.pending[a.pmid] = a.document  # a later record in this file wins
        if len(self.pending) >= self.batch_size:
            self.flush()

    def remove(self, pmids: Sequence[str], version: int | None = None) -> None:
        if self._staged_ids.intersection(pmids):
            self._write_staged()  # stored first, then removed: the file's order
        mine = _key(self.path.name, version or (1 << 30))
        keep = [p for p in pmids if not _newer(self.stored_key(p), mine)]
        self.s.superseded += len(pmids) - len(keep)
        for p in keep:
            self.pending.pop(p, None)
            self.state["deleted"][p] = self.path.name
        self.s.deleted += self.w.delete(keep)

    def flush(self, *, final: bool = False) -> None:
        """Classify the pending batch and stage it, writing the batch staged before it (the
        new one split meanwhile); ``final``: write everything now (the file's end)."""
        todo: list[Document] = []
        if self.pending:
            todo = list(self.w.classify(list(self.pending.values()), self.s))
            self.pending.clear()
        if self.staged:
            self.s.chunks += self.w.write(self.staged, upcoming=todo or None)
        self.staged, self._staged_ids = todo, {d.id_ for d in todo}
        if final:
            self._write_staged()

    def _write_staged(self) -> None:
        if self.staged:
            self.s.chunks += self.w.write(self.staged)
        self.staged, self._staged_ids = [], set()


def ingest_pubmed(
    settings: Settings,
    paths: Sequence[str | Path],
    *,
    collection: str | None = None,
    embed_model: BaseEmbedding | None = None,
    max_chars: int = MAX_DOC_CHARS,
    batch_size: int = DOCS_PER_BATCH,
    limit_files: int | None = None,
    show_progress: bool = True,
) -> PubmedSummary:
    """Ingest MEDLINE/PubMed XML files (``.xml`` or ``.xml.gz``) or directories of them."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    files = px.find_files([Path(p) for p in paths])[:limit_files]
    ref = store.StoreRef.from_settings(settings, collection)
    s = PubmedSummary(store=ref.name, embedding=ref.embedding)
    existed = ref.exists()
    with StoreWriter(settings, ref, embed_model) as w:
        state = _load_state(ref)
        if any(_pending(state, p) for p in files):
            w.prepare()  # the embedding model loaded before the files' clock starts
        bar = tqdm(files, unit="file", desc="files", disable=not show_progress)
        for path in bar:
            if not _pending(state, path):
                s.files_skipped += 1
                continue
            size = path.stat().st_size
            bar.set_postfix_str(path.name)
            run = _FileRun(w, state, path, s, batch_size)
            # a second bar below the first only on a terminal (it moves the cursor)
            rec_bar = tqdm(
                unit="rec", desc=path.name, leave=False, disable=not (show_progress and _tty())
            )
            records = 0
            try:
                px.check_md5(path)
                for ev in px.iter_file(path, max_chars=max_chars):
                    if isinstance(ev, px.Article):
                        run.article(ev)
                    elif isinstance(ev, px.NoAbstract):
                        s.no_abstract += 1
                        run.remove([ev.pmid], ev.version)
                    elif isinstance(ev, px.Deletion):
                        run.remove(ev.pmids)
                        continue
                    else:
                        s.rejected += 1
                        s.errors.append(str(ev.error))
                        logger.debug("%s", ev.error)  # shown once, by the caller (summary.errors)
                    records += 1
                    rec_bar.update()
                run.flush(final=True)
            except DataError as e:
                run.flush(final=True)  # keep every valid record read before the break
                w.save()
                s.files_failed.append(str(e))
                logger.debug("%s", e)  # shown once, by the caller (summary.files_failed)
                continue
            finally:
                rec_bar.close()
            w.save()  # the file's documents are durable before the file is marked done
            state["files"][path.name] = {
                "size": size,
                "records": records,
                "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            store.write_json_atomic(ref.dir / STATE, state)
            s.files += 1
        bar.close()
        # A new store that got nothing (every file failed, or had no abstract): not created.
        nothing = not existed and store.docstore_count(w.docstore) == 0 and not state["deleted"]
        if not nothing:
            store.write_json_atomic(ref.dir / STATE, state)
            w.finish(s, t0, show_progress=show_progress)
    if nothing:
        store.drop_store(ref)
        raise DataError(_nothing_read(s, len(files)))
    return s


def _nothing_read(s: PubmedSummary, files: int) -> str:
    """Why a run stored nothing (and so created no store)."""
    why = []
    if s.files:
        read = f"{plural(s.files, 'file')} read, no citation with an abstract in it"
        if s.rejected:
            read += f" ({plural(s.rejected, 'record')} rejected, e.g. {s.errors[0]})"
        why.append(read)
    if s.files_failed:
        why.append(f"{plural(len(s.files_failed), 'file')} could not be read")
    if not files:
        why.append("no file to read")
    failed = "".join(f"\n  {e}" for e in s.files_failed)  # one line each
    return "nothing to ingest: " + "; ".join(why) + "; nothing was stored" + failed
