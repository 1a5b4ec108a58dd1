"""Which sentence of a cited abstract to quote: one that reports a finding.

An answer that quotes the cited abstracts (a model with no measured skill, or whose text held
nothing beyond a verdict) used to quote the sentence sharing the most words with the question —
in most abstracts the one that *restates* it ("Objective: To determine whether …", "We aimed to
investigate …"), which answers nothing. Now the quote is chosen among the sentences that report
findings: in a structured abstract, those of its results/conclusions sections (the authors'
own labels, ``Results: …`` as medllm stores them); in any other, those a small learnt model
rates likely to be findings — a logistic regression over the sentence's words and its position
in the text, trained by ``bench/train_findings.py`` on the PQA-L *training* abstracts with their
section labels hidden (target: the sentence is in a results/conclusions section), shipped as
``findings.json`` beside this module with its cross-validated figures. Among the candidates the
quote shares the most words with the question.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

MODEL_PATH = Path(__file__).with_name("findings.json")
TOKEN = re.compile(r"\b\w+\b|[%=<>]")
SECTION = re.compile(r"^([A-Z][A-Za-z ,/&-]{2,60}):\s")
_FINDING = ("RESULT", "FINDING", "CONCLU", "DISCUSSION", "INTERPRETATION")


def is_finding_label(label: str) -> bool:
    """A section label whose sentences report findings (RESULTS, CONCLUSIONS, MAIN RESULTS,
    PRINCIPAL FINDINGS …; not MAIN OUTCOME MEASURES)."""
    up = label.upper()
    return any(f in up for f in _FINDING) and "MEASURE" not in up


def section_labels(sents: Sequence[str]) -> list[str]:
    """The section label each sentence falls under ("" before any label / none at all)."""
    out, cur = [], ""
    for s in sents:
        if m := SECTION.match(s):
            cur = m.group(1).upper()
        out.append(cur)
    return out


def position_features(i: int, n: int) -> list[float]:
    """Relative position, first sentence, last sentence."""
    return [i / max(1, n - 1), float(i == 0), float(i == n - 1)]


def tokens(sentence: str) -> set[str]:
    body = SECTION.sub("", sentence, count=1)
    return {t.lower() for t in TOKEN.findall(body)}


@lru_cache(maxsize=1)
def _model() -> dict[str, Any]:
    return dict(json.loads(MODEL_PATH.read_text()))


def finding_probs(sents: Sequence[str], model: dict[str, Any] | None = None) -> list[float]:
    """P(the sentence reports a finding) for each sentence of one text, from the shipped model."""
    m = model or _model()
    words: dict[str, float] = m["words"]
    n = len(sents)
    out = []
    for i, s in enumerate(sents):
        z = m["intercept"] + sum(words.get(t, 0.0) for t in tokens(s))
        z += sum(c * f for c, f in zip(m["position"], position_features(i, n), strict=True))
        out.append(1.0 / (1.0 + math.exp(-z)))
    return out


def choose(
    sents: Sequence[str],
    query_words: set[str],
    words_of: Any,
    probs: Sequence[float] | None = None,
) -> int:
    """Index of the sentence to quote. ``words_of(sentence)``: its content words (as compared
    with ``query_words``); ``probs``: :func:`finding_probs` (computed when needed)."""
    n = len(sents)
    labels = section_labels(sents)
    if any(is_finding_label(lab) for lab in labels):  # a structured abstract: its authors say
        cands = [i for i in range(n) if is_finding_label(labels[i])]
        p = [float(is_finding_label(lab)) for lab in labels]
    else:
        p = list(probs) if probs is not None else finding_probs(sents)
        cands = [i for i in range(n) if p[i] >= 0.5] or list(range(n))
    return max(
        cands,
        key=lambda i: (len(words_of(sents[i]) & query_words) + p[i], -abs(len(sents[i]) - 200)),
    )
