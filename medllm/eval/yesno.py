"""Yes/no question files for ``medllm eval yesno``: plain JSONL or the MIRAGE benchmark file.

* JSONL, one question per line: ``question``, ``answer`` (yes | no | maybe), optional ``id``
  and optional gold document ids (``gold`` / ``gold_docs`` / ``pmids``: a list or one id).
* MIRAGE's ``benchmark.json`` (``{dataset: {id: {question, options, answer}}}``): the questions
  whose options are yes/no(/maybe) are kept (PubMedQA*, BioASQ-Y/N); the answer letter is mapped
  to its option; gold ids from a ``PMID`` field, or the id itself for the ``pubmedqa`` set.

Bad records are refused before anything is asked, with file, record and field named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medllm.errors import DataError
from medllm.eval.engine_eval import OPTIONS, YesNoItem

_GOLD_FIELDS = ("gold", "gold_docs", "pmids", "pmid", "PMID")


def _ids(value: Any, path: Path, record: str, field: str) -> list[str]:
    """Gold document ids: one id or a list of them (None: none)."""
    if value is None:
        return []
    if isinstance(value, str | int):
        return [str(value)]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise DataError("must be an id or a list of ids", path=path, record=record, field=field)


def load_yesno(path: Path) -> list[YesNoItem]:
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", path=path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise DataError(f"not valid JSON: {e}", path=path) from None
        return _mirage(data, path)
    items = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"not valid JSON: {e}", path=path, record=f"line {n}") from None
        if not isinstance(rec, dict):
            raise DataError(
                f"expected a JSON object with 'question' and 'answer', got "
                f"{type(rec).__name__} {_clip(line)}",
                path=path,
                record=f"line {n}",
            )
        rid = str(rec.get("id", f"line-{n}"))
        if rid in first_line:
            raise DataError(
                f"id {rid!r} is used twice (lines {first_line[rid]} and {n}); ids must be unique",
                path=path,
                record=f"line {n}",
                field="id",
            )
        first_line[rid] = n
        q = rec.get("question")
        if not isinstance(q, str) or not q.strip():
            raise DataError("missing or empty", path=path, record=rid, field="question")
        ans = rec.get("answer")
        if ans is not None and str(ans).lower() not in OPTIONS:
            raise DataError(
                f"must be yes/no/maybe, got {ans!r}", path=path, record=rid, field="answer"
            )
        gold: list[str] = []
        for f in _GOLD_FIELDS:
            if f in rec:
                gold = _ids(rec[f], path, rid, f)
                break
        items.append(YesNoItem(rid, q.strip(), str(ans).lower() if ans else None, gold))
    if not items:
        raise DataError("no questions in the file", path=path)
    return items


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _mirage(data: Any, path: Path) -> list[YesNoItem]:
    if not isinstance(data, dict) or "question" in data:
        raise DataError(
            "expected MIRAGE's benchmark.json ({dataset: {id: record}}); a file of one "
            "question per line is JSONL: name it .jsonl",
            path=path,
        )
    items = []
    for dataset, recs in data.items():
        if not isinstance(recs, dict):
            raise DataError(
                "expected MIRAGE's {dataset: {id: record}}; a file of one question per line "
                "is JSONL: name it .jsonl",
                path=path,
                record=str(dataset),
            )
        for rid, rec in recs.items():
            opts = rec.get("options") if isinstance(rec, dict) else None
            if not isinstance(opts, dict):
                raise DataError(
                    "missing options", path=path, record=f"{dataset}/{rid}", field="options"
                )
            values = {str(v).strip().lower() for v in opts.values()}
            if not values <= set(OPTIONS) or not {"yes", "no"} <= values:
                continue  # a multiple-choice set (MedQA, MMLU...): not yes/no
            letter = rec.get("answer")
            if letter not in opts:
                raise DataError(
                    f"answer {letter!r} is not one of the options",
                    path=path,
                    record=f"{dataset}/{rid}",
                    field="answer",
                )
            q = rec.get("question")
            if not isinstance(q, str) or not q.strip():
                raise DataError(
                    "missing or empty", path=path, record=f"{dataset}/{rid}", field="question"
                )
            gold = _ids(rec.get("PMID"), path, f"{dataset}/{rid}", "PMID") or (
                [str(rid)] if dataset == "pubmedqa" else []
            )
            items.append(
                YesNoItem(
                    f"{dataset}/{rid}",
                    q.strip(),
                    str(opts[letter]).strip().lower(),
                    gold,
                )
            )
    if not items:
        raise DataError("no yes/no questions in the MIRAGE file", path=path)
    return items
