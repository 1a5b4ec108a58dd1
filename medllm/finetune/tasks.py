"""Task formats: read training records and build prompts.

The prompt format of every labelled task lives here and only here: training builds its
examples with these functions, and evaluation scores the same prompts with
:func:`medllm.scoring.score_options` (``chat_prompt(tok, messages)`` + the options below), so a
fine-tuned adapter is always evaluated on the format it was trained on.

Bad records refuse the whole file before anything is trained: the error names the file, the
record and the field.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm.errors import DataError

logger = logging.getLogger(__name__)

PUBMEDQA_OPTIONS = ("yes", "no", "maybe")
NLI_OPTIONS = ("entailment", "neutral", "contradiction")
MCQ_OPTIONS = ("A", "B", "C", "D")
OPTIONS: dict[str, tuple[str, ...]] = {
    "pubmedqa": PUBMEDQA_OPTIONS,
    "nli": NLI_OPTIONS,
    "mcq": MCQ_OPTIONS,
}

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    """One training example: the prompt turns, the response, and (for labelled tasks) the
    label the response starts with."""

    id: str
    messages: Messages  # without the answer turn
    response: str
    label: str | None = None
    views: tuple[Messages, ...] = ()  # training-only extra prompts (task.head_extra_views)


# --------------------------------------------------------------------------- prompts


def cut_words(text: str, max_words: int | None) -> str:
    words = text.split()
    if max_words is None or len(words) <= max_words:
        return text
    return " ".join(words[:max_words]) + " ..."


def _with_system(system: str | None, user: str) -> Messages:
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": user}]


def pubmedqa_messages(
    question: str,
    context: str,
    *,
    max_context_words: int | None = None,
    system: str | None = None,
) -> Messages:
    """The PubMedQA prompt: abstract (optionally cut), question, the three allowed answers."""
    user = (
        f"Context: {cut_words(context, max_context_words)}\n\n"
        f"Question: {question}\n\nAnswer with yes, no or maybe."
    )
    return _with_system(system, user)


def nli_messages(premise: str, hypothesis: str, *, system: str | None = None) -> Messages:
    user = (
        f"Premise: {premise}\nHypothesis: {hypothesis}\n\n"
        "Does the premise entail the hypothesis? Answer with entailment, neutral or "
        "contradiction."
    )
    return _with_system(system, user)


def mcq_messages(question: str, options: dict[str, str], *, system: str | None = None) -> Messages:
    lines = "\n".join(f"{k}. {options[k]}" for k in MCQ_OPTIONS)
    user = f"Question: {question}\n{lines}\n\nAnswer with the letter of the correct option."
    return _with_system(system, user)


# --------------------------------------------------------------------------- reading files


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a JSON (list or {id: record}), JSONL or CSV file as ``(record id, dict)``."""
    if path.is_dir():
        raise DataError("is a directory; name the data file in it (JSON, JSONL or CSV)", path=path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read as UTF-8 text: {e}", path=path) from None
    if not text.strip():
        raise DataError("the file is empty", path=path)
    suffix = path.suffix.lower()
    rows: list[tuple[str, Any]]
    if suffix == ".csv":
        rows = [(f"row {i + 2}", r) for i, r in enumerate(csv.DictReader(text.splitlines()))]
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON at line {e.lineno}: {e.msg}", path=path) from None
        if isinstance(data, dict):
            rows = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, list):
            rows = [(f"#{i}", v) for i, v in enumerate(data)]
        else:
            raise DataError("expected a JSON list or object of records", path=path)
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg}", path=path, record=f"line {n}") from None
    if not rows:
        raise DataError("no records", path=path)
    for rid, r in rows:
        if not isinstance(r, dict):
            raise DataError("record is not an object", path=path, record=rid)
    return rows


def _text(rec: dict[str, Any], key: str, path: Path, rid: str) -> str:
    v = rec.get(key)
    if v is None:
        raise DataError("missing required field", path=path, record=rid, field=key)
    if not isinstance(v, str) or not v.strip():
        raise DataError("must be a non-empty string", path=path, record=rid, field=key)
    return v.strip()


# --------------------------------------------------------------------------- task loaders


def select_split(
    rows: list[tuple[str, dict[str, Any]]], split: str | None, path: Path, training: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """The records whose ``split`` field is ``split`` (None: all of them; for ``training``,
    with a warning when the file holds several splits, e.g. NLI4CT's ``pairs_train_dev.jsonl``:
    training on all of them trains on the dev items that ``medllm eval nli --split dev``
    scores)."""
    found = sorted({str(r["split"]) for _, r in rows if r.get("split") is not None})
    if split is None:
        if training and len(found) > 1:
            logger.warning(
                "%s holds the splits %s and all of them are used for training; pass --split "
                "(task.split) to keep one",
                path,
                ", ".join(found),
            )
        return rows
    kept = [(rid, r) for rid, r in rows if r.get("split") == split]
    if not kept:
        have = f"the file's splits are {', '.join(found)}" if found else "no record has one"
        raise DataError(f"no records with field 'split' = {split!r} ({have})", path=path)
    return kept


# (premise, hypothesis, label) field names: MedNLI, and NLI4CT-style files (what
# `medllm eval nli` reads too).
NLI_SCHEMAS = (("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis", "label"))


@dataclass
class NliData:
    """An NLI file read: ``(id, premise, hypothesis, label)`` records and the label set."""

    records: list[tuple[str, str, str, str]]
    # MedNLI: all three labels; a premise/hypothesis/label file: the labels it uses (NLI4CT's
    # pairs have no "neutral", so neither its metrics nor a classifier count one)
    options: tuple[str, ...]


def read_nli(path: Path, *, split: str | None = None, training: bool = False) -> NliData:
    """A MedNLI file (``sentence1``, ``sentence2``, ``gold_label``) or a
    ``premise``/``hypothesis``/``label`` file such as NLI4CT's pairs, the schema read from the
    first record (a file with neither is refused); ``split`` keeps the records whose ``split``
    is it. What fine-tuning (LM and classification head) and ``medllm eval nli`` read."""
    rows = read_rows(path)
    rid0, first = rows[0]
    schema = next((sc for sc in NLI_SCHEMAS[1:] if all(k in first for k in sc)), None)
    if schema is None:
        if not any(k in first for k in NLI_SCHEMAS[0]):
            raise DataError(
                "not an NLI file: records need sentence1/sentence2/gold_label (MedNLI) or "
                f"premise/hypothesis/label; found fields {sorted(first)[:8]}",
                path=path,
                record=rid0,
            )
        schema = NLI_SCHEMAS[0]
    prem, hyp, lab = schema
    out = []
    for rid, rec in select_split(rows, split, path, training):
        label = _text(rec, lab, path, rid).lower()
        if label not in NLI_OPTIONS:
            raise DataError(
                f"unknown label {label!r}; expected one of {', '.join(NLI_OPTIONS)}",
                path=path,
                record=rid,
                field=lab,
            )
        premise, hypothesis = _text(rec, prem, path, rid), _text(rec, hyp, path, rid)
        out.append((str(rec.get("pairID") or rec.get("id") or rid), premise, hypothesis, label))
    seen = {r[3] for r in out}
    options = tuple(o for o in NLI_OPTIONS if schema == NLI_SCHEMAS[0] or o in seen)
    return NliData(out, options)


def load_nli(
    path: Path, *, system: str | None = None, split: str | None = None, training: bool = False
) -> list[Example]:
    """MedNLI JSONL (``sentence1`` premise, ``sentence2`` hypothesis, ``gold_label``), or
    ``premise``/``hypothesis``/``label`` records (NLI4CT): see :func:`read_nli`."""
    nli = read_nli(path, split=split, training=training)
    return [
        Example(rid, nli_messages(premise, hypothesis, system=system), label, label)
        for rid, premise, hypothesis, label in nli.records
    ]


_LETTERS = {"1": "A", "2": "B", "3": "C", "4": "D", "0": None}


def _mcq_options(rec: dict[str, Any], path: Path, rid: str) -> dict[str, str]:
    if isinstance(rec.get("options"), dict):
        opts = {str(k).upper(): v for k, v in rec["options"].items()}
        field = "options"
    else:  # MedMCQA's original columns
        opts = {L: rec.get(f"op{L.lower()}") for L in MCQ_OPTIONS}
        field = "opa..opd"
    missing = [L for L in MCQ_OPTIONS if not isinstance(opts.get(L), str) or not opts[L].strip()]
    if missing:
        raise DataError(f"options {', '.join(missing)} missing", path=path, record=rid, field=field)
    return {L: str(opts[L]).strip() for L in MCQ_OPTIONS}


def _mcq_answer(rec: dict[str, Any], path: Path, rid: str) -> str:
    for key in ("answer_idx", "cop", "answer", "label"):
        if key in rec and rec[key] not in (None, ""):
            raw = str(rec[key]).strip()
            # MedMCQA's `cop` is 1-4 (0-3 in some dumps: 0 means A there).
            if key == "cop" and raw.isdigit():
                n = int(raw)
                return "ABCD"[n - 1] if 1 <= n <= 4 else "A" if n == 0 else "?"
            if raw.upper() in MCQ_OPTIONS:
                return raw.upper()
            if key == "answer":  # the answer text: handled by the caller
                continue
            raise DataError(
                f"unknown answer {raw!r}; expected A-D (or cop 1-4)",
                path=path,
                record=rid,
                field=key,
            )
    raise DataError("missing the correct option", path=path, record=rid, field="answer_idx")


def load_mcq(
    path: Path, *, system: str | None = None, split: str | None = None, training: bool = False
) -> list[Example]:
    """MedMCQA-style records: question, options A-D (``options`` dict or ``opa..opd``),
    the correct option (``answer_idx`` letter or ``cop`` 1-4), optional ``exp``/``explanation``."""
    out = []
    for rid, rec in select_split(read_rows(path), split, path, training):
        question = _text(rec, "question", path, rid)
        opts = _mcq_options(rec, path, rid)
        answer = _mcq_answer(rec, path, rid)
        if answer not in MCQ_OPTIONS:
            raise DataError("correct option out of range", path=path, record=rid, field="cop")
        expl = rec.get("exp") or rec.get("explanation")
        response = answer + (f"\nExplanation: {expl.strip()}" if isinstance(expl, str) else "")
        msgs = mcq_messages(question, opts, system=system)
        out.append(Example(str(rec.get("id") or rec.get("realidx") or rid), msgs, response, answer))
    return out


def load_instructions(
    path: Path, *, system: str | None = None, split: str | None = None, training: bool = False
) -> list[Example]:
    """``instruction``/``input``/``output``, chat ``messages`` (the last turn is the answer),
    or Asclepius-style ``note``/``question``/``answer``."""
    out = []
    for rid, rec in select_split(read_rows(path), split, path, training):
        if "messages" in rec:
            msgs = rec["messages"]
            ok = isinstance(msgs, list) and len(msgs) >= 2
            ok = ok and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
                for m in msgs
            )
            if not ok or msgs[-1]["role"] != "assistant":
                raise DataError(
                    "must be a list of {role, content} turns ending with an assistant turn",
                    path=path,
                    record=rid,
                    field="messages",
                )
            prompt = [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]
            if system and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}, *prompt]
            out.append(Example(rid, prompt, msgs[-1]["content"].strip()))
            continue
        if "note" in rec and "question" in rec:
            instr, inp = _text(rec, "question", path, rid), _text(rec, "note", path, rid)
            answer = _text(rec, "answer", path, rid)
        else:
            instr = _text(rec, "instruction", path, rid)
            inp = rec.get("input") or ""
            if not isinstance(inp, str):
                raise DataError("must be a string", path=path, record=rid, field="input")
            answer = _text(rec, "output", path, rid)
        user = f"{instr}\n\n{inp.strip()}" if inp.strip() else instr
        out.append(Example(rid, _with_system(system, user), answer))
    return out


def load_pubmedqa(
    path: Path,
    test_pmids: dict[str, str],
    *,
    on_overlap: str = "refuse",
    long_answer: bool = False,
    max_context_words: int | None = None,
    context_sections: Sequence[str] | None = None,
    system: str | None = None,
    extra_views: Sequence[str] = (),
) -> tuple[list[Example], int]:
    """PubMedQA records (official schema) minus the official test split.

    The official ``ori_pqal.json`` holds the 500 test questions too: they are always dropped
    (that *is* the official split). Any other file containing a test PMID is refused, or,
    with ``on_overlap="drop"``, those records are dropped with a warning. Returns the examples
    and the number of test PMIDs dropped. ``extra_views`` (``long_answer``) adds each record's
    conclusion, in place of its context, as the example's training-only :attr:`Example.views`.
    """
    from medllm import pubmedqa

    records = pubmedqa.load(path, strict=True).records
    if not records:
        raise DataError("no records", path=path)
    overlap = [r.pmid for r in records if r.pmid in test_pmids]
    official = path.name == "ori_pqal.json"
    if overlap and not official and on_overlap == "refuse":
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise DataError(
            f"{len(overlap)} training records are in the official PubMedQA test split "
            f"(PMIDs {shown}); training on them would leak the test set. Remove them, or set "
            "task.on_test_overlap: drop",
            path=path,
            record=overlap[0],
        )
    if overlap:
        log = logger.info if official else logger.warning
        log("dropped %d records that are in the official test split", len(overlap))
    out = []
    for r in records:
        if r.pmid in test_pmids:
            continue
        if r.final_decision is None:
            raise DataError("unlabelled record", path=path, record=r.pmid, field="final_decision")
        msgs = pubmedqa_messages(
            r.question,
            r.sections_text(context_sections),
            max_context_words=max_context_words,
            system=system,
        )
        response = r.final_decision
        if long_answer and r.long_answer:
            response += f"\n{r.long_answer.strip()}"
        views = tuple(
            pubmedqa_messages(r.question, r.long_answer, system=system)
            for v in extra_views
            if v == "long_answer" and r.long_answer
        )
        out.append(Example(r.pmid, msgs, response, r.final_decision, views))
    if not out:
        raise DataError(
            "every record is in the official test split: nothing to train on", path=path
        )
    return out, len(overlap)
