"""The PubMedQA dataset: official files, schema checks and the official test split.

Records keep everything the official JSON carries. Which parts may be *embedded* is decided by
the ingestion reader (never QUESTION, LONG_ANSWER or final_decision); evaluation and
fine-tuning read the rest from here.

Sources: a local path, or by default a download of the official file from the PubMedQA GitHub
repository, cached under ``MEDLLM_HOME/data/pubmedqa``.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medllm.errors import DataError

logger = logging.getLogger(__name__)

LABELS = ("yes", "no", "maybe")
OFFICIAL_URLS = {
    "ori_pqal.json": "https://raw.githubusercontent.com/pubmedqa/pubmedqa/master/data/ori_pqal.json",
    "test_ground_truth.json": "https://raw.githubusercontent.com/pubmedqa/pubmedqa/master/data/test_ground_truth.json",
}


@dataclass(frozen=True)
class PubMedQARecord:
    pmid: str
    question: str
    contexts: tuple[str, ...]
    labels: tuple[str, ...]  # section labels (BACKGROUND, METHODS...), one per context
    meshes: tuple[str, ...] = ()
    year: int | None = None
    final_decision: str | None = None  # yes/no/maybe; None for unlabelled PQA-U
    long_answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _sections(self) -> list[tuple[str, str]]:
        """(label, context) pairs; contexts beyond the labels get an empty label."""
        labels = list(self.labels) + [""] * (len(self.contexts) - len(self.labels))
        return list(zip(labels, self.contexts, strict=False))

    @staticmethod
    def _join(sections: Sequence[tuple[str, str]]) -> str:
        return "\n".join(f"{lab.capitalize()}: {ctx}" if lab else ctx for lab, ctx in sections)

    @property
    def context_text(self) -> str:
        """The abstract as embedded and shown: each context prefixed by its section label."""
        return self._join(self._sections())

    def sections_text(self, sections: Sequence[str] | None) -> str:
        """Like :attr:`context_text`, keeping only the sections whose label contains one of
        ``sections`` (case-insensitive: ``["results"]`` keeps RESULTS and MAIN RESULTS).

        None keeps everything; an abstract with no matching section is kept whole (an
        unstructured abstract has nothing to select from)."""
        if not sections:
            return self.context_text
        wanted = [s.upper() for s in sections]
        kept = [(lab, c) for lab, c in self._sections() if any(w in lab.upper() for w in wanted)]
        return self._join(kept) if kept else self.context_text


@dataclass
class LoadReport:
    """What a load kept and what it rejected (with reasons naming file/record/field)."""

    path: Path
    records: list[PubMedQARecord]
    rejected: list[DataError]


SOURCE_HINT = "Offline? Pass a local copy with --source PATH (or set eval.pubmedqa_dir)."


def _download(name: str, dest_dir: Path, hint: str = SOURCE_HINT) -> Path:
    dest = dest_dir / name
    if dest.is_file():
        return dest
    url = OFFICIAL_URLS[name]
    dest_dir.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s", url)
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, tmp.open("wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"could not download the official PubMedQA file {name} from {url} ({e}). {hint}"
        ) from None
    tmp.replace(dest)
    return dest


LOCAL_COPY = "local_copy.json"  # under data_dir/pubmedqa: the folder `ingest --source` read


def remember_local_copy(path: Path, data_dir: Path) -> None:
    """Note that ``path`` — a local official ``ori_pqal.json`` just ingested — is the PubMedQA
    copy to use when a command is given no source, so that ``medllm eval pubmedqa`` and
    ``medllm calibrate`` after ``medllm ingest pubmedqa --source PATH`` read the same files
    (and ``test_ground_truth.json`` beside it) instead of downloading them."""
    if path.name != "ori_pqal.json" or not path.is_file():
        return
    d = data_dir / "pubmedqa"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{LOCAL_COPY}.{os.getpid()}"
    tmp.write_text(json.dumps({"dir": str(path.resolve().parent)}))
    os.replace(tmp, d / LOCAL_COPY)


def _local_copy(name: str, data_dir: Path) -> Path | None:
    try:
        d = Path(json.loads((data_dir / "pubmedqa" / LOCAL_COPY).read_text())["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return d / name if (d / name).is_file() else None


def resolve_source(
    source: str | Path | None,
    data_dir: Path,
    name: str = "ori_pqal.json",
    *,
    hint: str | None = None,
) -> Path:
    """A local file/dir, a URL, or None: the official file — a copy already in ``data_dir``,
    else the local copy ``medllm ingest pubmedqa --source`` last read
    (:func:`remember_local_copy`), else downloaded into ``data_dir``. ``hint`` ends the error
    of a download that failed or of a file not found (what the calling command takes instead;
    default: ``--source``)."""
    if source is None:
        if not (data_dir / "pubmedqa" / name).is_file() and (local := _local_copy(name, data_dir)):
            logger.info("PubMedQA %s: the local copy ingested before, %s", name, local)
            return local
        return _download(name, data_dir / "pubmedqa", hint or SOURCE_HINT)
    s = str(source)
    if s.startswith(("http://", "https://")):
        dest = data_dir / "pubmedqa" / Path(s).name
        if not dest.is_file():
            OFFICIAL_URLS.setdefault(dest.name, s)
            return _download(dest.name, dest.parent, hint or SOURCE_HINT)
        return dest
    p = Path(s).expanduser()
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise DataError(f"PubMedQA file not found: {p}" + (f". {hint}" if hint else ""))
    return p


def _read_json(path: Path) -> Any:
    from medllm.fsutil import read_utf8

    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", path=path
        ) from None


def parse_record(pmid: str, rec: Any, path: Path) -> PubMedQARecord:
    """Validate one official-schema record; raise DataError naming file, record and field."""
    if not isinstance(rec, dict):
        raise DataError("record is not a JSON object", path=path, record=pmid)
    for key in ("QUESTION", "CONTEXTS"):
        if key not in rec:
            raise DataError("missing required field", path=path, record=pmid, field=key)
    contexts = rec["CONTEXTS"]
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise DataError("must be a list of strings", path=path, record=pmid, field="CONTEXTS")
    contexts = [c for c in contexts if c.strip()]
    if not contexts:
        raise DataError("empty text", path=path, record=pmid, field="CONTEXTS")
    if not isinstance(rec["QUESTION"], str) or not rec["QUESTION"].strip():
        raise DataError("empty question", path=path, record=pmid, field="QUESTION")
    decision = rec.get("final_decision")
    if decision is not None and decision not in LABELS:
        raise DataError(
            f"must be one of {LABELS}, got {decision!r}",
            path=path,
            record=pmid,
            field="final_decision",
        )
    year = rec.get("YEAR")
    try:
        year_i = int(year) if year not in (None, "") else None
    except (TypeError, ValueError):
        raise DataError(f"not a year: {year!r}", path=path, record=pmid, field="YEAR") from None
    known = {"QUESTION", "CONTEXTS", "LABELS", "MESHES", "YEAR", "final_decision", "LONG_ANSWER"}
    return PubMedQARecord(
        pmid=str(pmid),
        question=rec["QUESTION"].strip(),
        contexts=tuple(contexts),
        labels=tuple(str(x) for x in rec.get("LABELS") or ()),
        meshes=tuple(str(x) for x in rec.get("MESHES") or ()),
        year=year_i,
        final_decision=decision,
        long_answer=rec.get("LONG_ANSWER"),
        extra={k: v for k, v in rec.items() if k not in known},
    )


def load(path: str | Path, *, strict: bool = False) -> LoadReport:
    """Load an official-schema PubMedQA file (PQA-L, PQA-A or PQA-U).

    Bad records are reported and skipped (``strict=True`` raises on the first one instead);
    a file that is not a JSON object of records raises.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError("expected a JSON object {pmid: record, ...}", path=path)
    records, rejected = [], []
    for pmid, rec in data.items():
        try:
            records.append(parse_record(pmid, rec, path))
        except DataError as e:
            if strict:
                raise
            rejected.append(e)
            logger.warning("%s", e)
    return LoadReport(path=path, records=records, rejected=rejected)


def load_test_pmids(path: str | Path) -> dict[str, str]:
    """The official 500-question test split: ``{pmid: gold label}``."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not all(v in LABELS for v in data.values()):
        raise DataError("expected {pmid: 'yes'|'no'|'maybe'}", path=path)
    return {str(k): v for k, v in data.items()}
