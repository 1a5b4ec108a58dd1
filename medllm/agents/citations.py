"""Citations checked in code: only retrieved documents can be cited.

The model is asked to cite ``[n]``; markers outside the retrieved range and PMIDs that were not
retrieved are removed from the text. Each citation carries the abstract sentence with the
largest word overlap with the question and answer (a deterministic choice, no model call).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medllm.agents.answer import Citation
from medllm.agents.prompts import sanitize, sentences

if TYPE_CHECKING:
    from medllm.retrieval import RetrievedDoc

_MARK = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_PMID = re.compile(r"\bPMID[:\s]*(\d{4,9})\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]{3,}")
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "that",
        "this",
        "from",
        "were",
        "was",
        "are",
        "have",
        "has",
        "had",
        "not",
        "but",
        "can",
        "may",
        "its",
        "their",
        "than",
        "which",
        "what",
        "when",
        "where",
        "who",
        "how",
        "does",
        "did",
        "into",
        "also",
        "been",
        "these",
        "those",
        "there",
    ]
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def clean_markers(text: str, docs: Sequence[RetrievedDoc]) -> tuple[str, list[int], list[str]]:
    """Text with invalid ``[n]`` markers and unretrieved PMIDs removed.

    Returns (text, valid cited numbers in order of first use, warnings).
    """
    n = len(docs)
    retrieved = {d.doc_id for d in docs}
    cited: list[int] = []
    warnings: list[str] = []

    def fix(m: re.Match[str]) -> str:
        nums = [int(x) for x in m.group(1).split(",")]
        ok = [x for x in nums if 1 <= x <= n]
        bad = [x for x in nums if x not in ok]
        if bad:
            warnings.append(f"removed citation marker(s) {bad}: no such retrieved abstract")
        for x in ok:
            if x not in cited:
                cited.append(x)
        return "[" + ", ".join(map(str, ok)) + "]" if ok else _GONE

    def fix_pmid(m: re.Match[str]) -> str:
        if m.group(1) in retrieved:
            return m.group(0)
        warnings.append(f"removed PMID {m.group(1)}: it was not retrieved for this question")
        before = m.string[: m.start()].rstrip()
        return "A source" if not before or before[-1] in ".!?" else "a source"

    text = _PMID.sub(fix_pmid, _MARK.sub(fix, text))
    # Only where a marker was removed: its space goes too ("text [9]." -> "text."); the rest
    # of the text is left as written (quotes stay verbatim: "P = .03" is not "P =.03").
    text = re.sub(rf"[ \t]*{_GONE}[ \t]*(?=[.,;:!?])", "", text)
    text = re.sub(rf"[ \t]*{_GONE}", "", text)
    return text.strip(), cited, warnings


_GONE = "\x00"  # where clean_markers removed a marker


def best_sentence(doc_text: str, query: str) -> str:
    """The sentence of ``doc_text`` to quote for ``query``: one reporting a finding (its
    results/conclusions, or what :mod:`medllm.agents.findings` rates a finding), sharing the
    most content words with ``query`` — not the sentence that restates the question."""
    from medllm.agents.findings import choose

    clean, _ = sanitize(doc_text)
    cands = sentences(clean) or [clean]
    best = cands[choose(cands, _words(query), _words)]
    return best if len(best) <= 400 else best[:397] + "..."


def build_citations(
    docs: Sequence[RetrievedDoc], cited: Sequence[int], query: str
) -> list[Citation]:
    """Citations for every document given to the model, the model-cited ones first."""
    order = list(cited) + [i for i in range(1, len(docs) + 1) if i not in cited]
    out = []
    for i in order:
        d = docs[i - 1]
        year = d.metadata.get("year")
        out.append(
            Citation(
                number=i,
                pmid=d.doc_id,
                score=round(float(d.score), 4),
                similarity=round(float(d.similarity), 4),
                sentence=best_sentence(d.text, query),
                year=int(year) if isinstance(year, int | str) and str(year).isdigit() else None,
                title=d.metadata.get("title"),
            )
        )
    return out


def check_citations(cits: Sequence[Citation], docs: Sequence[RetrievedDoc]) -> None:
    """Raise if a citation names a document that was not retrieved (a bug, never user input)."""
    retrieved = {d.doc_id for d in docs}
    bad = [c.pmid for c in cits if c.pmid not in retrieved]
    if bad:
        raise AssertionError(f"citations {bad} were not retrieved for this question")
