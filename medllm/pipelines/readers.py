"""Readers: files → LlamaIndex Documents with stable ids, plus the records they rejected.

Every reader reports and skips bad records (a :class:`DataError` naming file, record and
field) and keeps every valid one. A file that cannot be parsed at all (malformed JSON for a
PubMedQA file) raises before anything is written.

PubMedQA: one Document per abstract, ``id_`` = PMID, text = the CONTEXTS with their section
LABELS. QUESTION, LONG_ANSWER and final_decision are never put in a Document (they would leak
the answer into retrieval); evaluation reads them from :mod:`medllm.pubmedqa`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medllm.errors import DataError

if TYPE_CHECKING:
    from llama_index.core import Document

logger = logging.getLogger(__name__)

MAX_DOC_CHARS = 1_000_000  # ~250k tokens; larger documents are rejected with a clear message


@dataclass
class ReadResult:
    documents: list[Document] = field(default_factory=list)
    rejected: list[DataError] = field(default_factory=list)
    # where each document was read, beside ``documents`` (``line 3 (id '7')``; None: unknown)
    where: list[str | None] = field(default_factory=list)
    text_field: str = "text"  # the field (column) the documents' text came from

    def add(self, doc: Document, where: str | None = None) -> None:
        self.documents.append(doc)
        self.where.append(where)


def plural(n: int, noun: str) -> str:
    """``1 record``, ``2 records``, ``12,000 records``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


# The file a JSONL/CSV record was read from: stored with it, but not part of what it says —
# the same record in two files is one document, not a conflict.
SOURCE_FILE = "source_file"


def make_document(doc_id: str, text: str, metadata: dict[str, Any]) -> Document:
    """A Document whose metadata is stored and filterable but never embedded or BM25-indexed."""
    from llama_index.core import Document

    keys = list(metadata)
    return Document(
        id_=doc_id,
        text=text,
        metadata=metadata,
        excluded_embed_metadata_keys=keys,
        excluded_llm_metadata_keys=keys,
    )


def _bad_utf8(value: Any) -> bool:
    """True when a string decoded with surrogateescape carried invalid UTF-8 bytes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_bad_utf8(v) for v in value.values())
    if isinstance(value, list):
        return any(_bad_utf8(v) for v in value)
    return False


def _check_text(text: str, path: Path, record: object, fld: str, max_chars: int) -> None:
    if not text.strip():
        raise DataError("empty text", path=path, record=record, field=fld)
    if len(text) > max_chars:
        raise DataError(
            f"document is {len(text) / 1e6:.1f} M characters, over the {max_chars:,} limit "
            "(max_doc_chars); split it into smaller documents",
            path=path,
            record=record,
            field=fld,
        )


def _decode(path: Path) -> str:
    """The file's text; invalid UTF-8 bytes kept as surrogates (so that the record holding them
    is the one rejected) and a leading byte-order mark (Excel's "CSV UTF-8") dropped."""
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"cannot read: {e}", path=path) from None
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    """JSONL lines: split at ``\n``, ``\r\n`` or ``\r`` only (none may appear unescaped in
    a JSON string). Not ``str.splitlines``, which also splits at U+2028, U+0085 and other
    characters that a JSON string may hold unescaped, cutting such a record in two."""
    return re.split(r"\r\n|\r|\n", text)


class _Obj(dict[str, Any]):
    """A JSON object that remembers keys that appeared more than once."""

    dups: list[tuple[str, Any]]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.dups = []
    for k, v in pairs:
        if k in obj:
            obj.dups.append((k, v))
        else:
            obj[k] = v
    return obj


def read_pubmedqa(path: Path, *, max_chars: int = MAX_DOC_CHARS) -> ReadResult:
    """Read an official-schema PubMedQA file (PQA-L, PQA-A or PQA-U)."""
    from medllm.pubmedqa import parse_record

    try:
        data = json.loads(_decode(path), object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as e:
        raise DataError(
            f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}; nothing was stored",
            path=path,
        ) from None
    if not isinstance(data, dict):
        raise DataError("expected a JSON object {pmid: record, ...}", path=path)
    out = ReadResult(text_field="CONTEXTS")
    for pmid, rec in data.items():
        try:
            if isinstance(rec, dict) and _bad_utf8(rec):
                fld = next(k for k, v in rec.items() if _bad_utf8(v))
                raise DataError("not valid UTF-8", path=path, record=pmid, field=fld)
            r = parse_record(pmid, rec, path)
            text = r.context_text
            _check_text(text, path, pmid, "CONTEXTS", max_chars)
        except DataError as e:
            out.rejected.append(e)
            continue
        meta: dict[str, Any] = {
            "pmid": r.pmid,
            "meshes": "; ".join(r.meshes),
            "labels": ", ".join(dict.fromkeys(r.labels)),
            "source": "pubmedqa",
        }
        if r.year is not None:
            meta["year"] = r.year
        out.add(make_document(r.pmid, text, meta))
    for pmid, rec in getattr(data, "dups", []):
        if rec == data[pmid]:
            logger.info("%s: PMID %s appears twice with the same content", path, pmid)
            continue
        out.rejected.append(
            DataError(
                "the same PMID appears twice with different content; kept the first",
                path=path,
                record=pmid,
                field="CONTEXTS",
            )
        )
    return out


def _scalar(v: Any) -> Any:
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, list) and all(isinstance(x, str | int | float) for x in v):
        return "; ".join(str(x) for x in v)
    return json.dumps(v, ensure_ascii=False)


def _names(fields: Iterable[str], limit: int = 20) -> str:
    names = list(fields)
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_fields(
    path: Path,
    found: Iterable[str],
    *,
    id_field: str,
    text_field: str,
    kind: Literal["field", "column"],
) -> None:
    """Refuse a file none of whose records has the id or text field: a wrong option, not bad
    records — every record would be rejected and an empty store created."""
    found = list(found)
    for name, opt in ((id_field, "--id-field"), (text_field, "--text-field")):
        if name not in found:
            missing = (
                f"no column {name!r}" if kind == "column" else f"no record has the field {name!r}"
            )
            raise DataError(
                f"{missing} ({opt}); {kind}s found: {_names(found) or 'none'}; nothing was stored",
                path=path,
            )


def _record_document(
    rec: dict[str, Any],
    *,
    path: Path,
    where: str,
    id_field: str,
    text_field: str,
    metadata_fields: Sequence[str] | None,
    max_chars: int,
) -> Document:
    if _bad_utf8(rec):
        fld = next(k for k, v in rec.items() if _bad_utf8(v) or _bad_utf8(k))
        raise DataError("not valid UTF-8", path=path, record=where, field=fld)
    if rec.get(id_field) in (None, ""):
        raise DataError("missing required field", path=path, record=where, field=id_field)
    raw_id = rec[id_field]
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | float) or raw_id != raw_id:
        got = json.dumps(raw_id, ensure_ascii=False)  # NaN too (json reads it)
        got = got if len(got) <= 40 else got[:37] + "..."
        raise DataError(
            f"must be a string or a number, not {got}", path=path, record=where, field=id_field
        )
    if rec.get(text_field) is None:
        raise DataError("missing required field", path=path, record=where, field=text_field)
    text = rec[text_field]
    if not isinstance(text, str):
        raise DataError("must be a string", path=path, record=where, field=text_field)
    _check_text(text, path, where, text_field, max_chars)
    doc_id = str(rec[id_field])
    keys = metadata_fields if metadata_fields is not None else list(rec)
    meta = {k: _scalar(rec[k]) for k in keys if k not in (id_field, text_field) and k in rec}
    meta = {k: v for k, v in meta.items() if v is not None}
    meta[SOURCE_FILE] = str(path)  # beside the record's own fields (a "source" field is kept)
    return make_document(doc_id, text, meta)


def read_jsonl(
    path: Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    metadata_fields: Sequence[str] | None = None,
    max_chars: int = MAX_DOC_CHARS,
) -> ReadResult:
    """One JSON object per line; a bad line is reported (by line number) and skipped."""
    out = ReadResult(text_field=text_field)
    seen: dict[str, None] = {}  # every field of every record, in first-seen order
    for lineno, line in enumerate(_lines(_decode(path)), 1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                # json's own position is within the line (always "line 1"): give the file's
                raise DataError(
                    f"malformed JSON: {e.msg}: line {lineno} column {e.colno} "
                    f"(char {e.pos} of the line)",
                    path=path,
                    record=where,
                ) from None
            if not isinstance(rec, dict):
                raise DataError("not a JSON object", path=path, record=where)
            seen.update(dict.fromkeys(rec))
            where = f"{where} (id {rec.get(id_field)!r})"
            out.add(
                _record_document(
                    rec,
                    path=path,
                    where=where,
                    id_field=id_field,
                    text_field=text_field,
                    metadata_fields=metadata_fields,
                    max_chars=max_chars,
                ),
                where,
            )
        except DataError as e:
            out.rejected.append(e)
    if seen:  # at least one JSON object: a field that none has is a wrong option
        _check_fields(path, seen, id_field=id_field, text_field=text_field, kind="field")
    return out


def read_csv(
    path: Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    metadata_fields: Sequence[str] | None = None,
    max_chars: int = MAX_DOC_CHARS,
) -> ReadResult:
    """A CSV with a header row; a bad row is reported (by row number) and skipped. An empty
    file (not even a header) has no records, like an empty JSONL file."""
    out = ReadResult(text_field=text_field)
    body = _decode(path)
    if not body.strip():
        return out
    # strict: a stray or unclosed quote is an error for its row, not text silently run together
    # with the rows after it; the reader goes on at the next line
    reader = csv.reader(io.StringIO(body, newline=""), strict=True)
    # csv's default field limit (131,072 characters) is below max_chars: a long text would be
    # "malformed"; no field is longer than the file
    csv.field_size_limit(max(csv.field_size_limit(), len(body) + 1))
    try:
        header = next(reader, [])
    except csv.Error as e:
        raise DataError(f"malformed CSV header: {e}; nothing was stored", path=path) from None
    _check_fields(path, header, id_field=id_field, text_field=text_field, kind="column")
    for name in dict.fromkeys((id_field, text_field)):
        if header.count(name) > 1:
            raise DataError(
                f"the header has the column {name!r} {header.count(name)} times; rename all but "
                "one; nothing was stored",
                path=path,
            )
    rowno = 1
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rowno += 1
            unclosed = "end of data" in str(e)
            why = ": an unclosed quote, the rest of the file was read into this row" * unclosed
            out.rejected.append(
                DataError(
                    f"malformed CSV: {e} (the row starting at line {start}){why}",
                    path=path,
                    record=f"row {rowno}",
                )
            )
            continue
        if not values:  # a blank line
            continue
        rowno += 1
        row = dict(zip(header, values, strict=False))
        where = f"row {rowno} (id {row.get(id_field)!r})"
        try:
            if len(values) > len(header):
                raise DataError(
                    f"{len(values)} values for {len(header)} columns (an unquoted comma?)",
                    path=path,
                    record=where,
                )
            out.add(
                _record_document(
                    row,
                    path=path,
                    where=where,
                    id_field=id_field,
                    text_field=text_field,
                    metadata_fields=metadata_fields,
                    max_chars=max_chars,
                ),
                where,
            )
        except DataError as e:
            out.rejected.append(e)
    return out


DIR_EXTS = (".txt", ".md", ".pdf")


def _read_text_file(f: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """A .txt/.md file: one document, id = its path. Decoded strictly: a file with invalid
    UTF-8 is refused (naming the byte), never stored with the bad bytes dropped."""
    from medllm.fsutil import read_utf8

    text = read_utf8(f)
    return [(str(f), text, {"file_path": str(f), "file_name": f.name})]


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """pypdf logs every repair it makes; a file it cannot read is reported by us instead."""
    lg = logging.getLogger(logger_name)
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def _read_pdf(f: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """A PDF through pypdf: one document per page that has text, id ``<path>_part_<page
    index>``, with its ``page_label``. A PDF with no text at all (a scan) is refused."""
    try:
        import pypdf
    except ImportError:
        raise DataError(
            "cannot read PDF files: the pypdf package is not installed (pip install pypdf)",
            path=f,
        ) from None
    try:
        with _quiet("pypdf"):
            reader = pypdf.PdfReader(f)
            # most "encrypted" PDFs have an empty user password (they only restrict copying)
            if reader.is_encrypted and not reader.decrypt(""):
                raise DataError("the PDF is password-protected; decrypt it first", path=f)
            labels = reader.page_labels
            pages = [page.extract_text() or "" for page in reader.pages]
    except DataError:
        raise
    except Exception as e:  # pypdf raises many types (and KeyError, ValueError…) on a bad file
        raise DataError(f"cannot read PDF: {type(e).__name__}: {e}", path=f) from None
    docs = []
    for i, text in enumerate(pages):
        if not text.strip():
            continue  # a blank or image-only page
        doc_id = f"{f}_part_{i}"
        label = labels[i] if i < len(labels) else str(i + 1)
        docs.append((doc_id, text, {"file_path": str(f), "file_name": f.name, "page_label": label}))
    if not docs:
        raise DataError(
            f"no extractable text in {len(pages)} page(s) (a scanned image? run OCR first)",
            path=f,
        )
    return docs


def read_dir(path: Path, *, max_chars: int = MAX_DOC_CHARS) -> ReadResult:
    """A directory (recursive) of .txt/.md (UTF-8) and .pdf (text through pypdf) files, or
    one such file.

    Ids are the file paths (``path_part_N`` for the pages of a PDF, N counted from 0), so
    re-reading is stable (a file named alone gets the ids it has when read in its folder). A
    file that cannot be read is reported and skipped as a whole.
    """
    if path.is_file():
        if path.suffix.lower() not in DIR_EXTS:
            raise DataError(f"not a {'/'.join(DIR_EXTS)} file or a directory", path=path)
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in DIR_EXTS and p.is_file())
    if not files:
        raise DataError(f"no {'/'.join(DIR_EXTS)} files found", path=path)
    out = ReadResult()
    for f in files:
        try:
            docs = _read_pdf(f) if f.suffix.lower() == ".pdf" else _read_text_file(f)
        except DataError as e:
            out.rejected.append(e)
            continue
        for doc_id, text, meta in docs:
            record = doc_id if doc_id != str(f) else None  # a page; a whole file is its path
            try:
                if _bad_utf8(text):  # a PDF's text with lone surrogates
                    raise DataError("not valid Unicode", path=f, record=record, field="text")
                _check_text(text, f, record, "text", max_chars)
            except DataError as e:
                out.rejected.append(e)
                continue
            out.add(make_document(doc_id, text, meta))
    return out


def _content(d: Document) -> tuple[str, list[tuple[str, str]]]:
    """What a document says: its text and metadata, without the file it was read from."""
    meta = sorted((k, repr(v)) for k, v in d.metadata.items() if k != SOURCE_FILE)
    return d.text, meta


def dedupe(
    docs: Iterable[Document],
    where: Sequence[str | None] | None = None,
    *,
    text_field: str | Sequence[str] = "text",
) -> ReadResult:
    """Keep the first Document per id; a later one with different content is rejected (the
    same record read again from another file is dropped silently).

    ``where`` (beside ``docs``): where each was read (``line 3 (id '7')``), and ``text_field``
    the field (or, beside ``docs``, each one's field) its text came from, so that a conflict
    names both records and the user's own field."""
    out = ReadResult()
    seen: dict[str, tuple[Document, str | None]] = {}
    wheres = list(where) if where is not None else []
    fields = [text_field] if isinstance(text_field, str) else list(text_field)
    for n, d in enumerate(docs):
        at = wheres[n] if n < len(wheres) else None
        first, first_at = seen.get(d.id_, (None, None))
        if first is None:
            seen[d.id_] = (d, at)
            out.add(d, at)
        elif first.hash != d.hash and _content(first) != _content(d):
            keys = sorted((set(first.metadata) | set(d.metadata)) - {SOURCE_FILE})
            fld = fields[n] if n < len(fields) else fields[0]
            differs = fld if first.text != d.text else next(
                (k for k in keys if first.metadata.get(k) != d.metadata.get(k)), "metadata"
            )  # fmt: skip
            first_file = _file_of(first)
            here = ", ".join(x for x in (first_file, first_at) if x) or None
            out.rejected.append(
                DataError(
                    "the same id appears twice with different content"
                    + (f" (first: {here})" if here else "")
                    + "; kept the first",
                    path=_file_of(d),
                    record=at or d.id_,
                    field=differs,
                )
            )
    return out


def _file_of(d: Document) -> str | None:
    f = d.metadata.get(SOURCE_FILE) or d.metadata.get("file_path") or d.metadata.get("file")
    return str(f) if f else None
