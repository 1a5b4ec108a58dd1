"""The answerability gate: which retrieved abstracts actually address the question.

Retrieval always returns *something*; a neighbouring abstract on the same disease is not
evidence for the question. The gate scores each (question, abstract) pair with a logistic
regression over a handful of features and lets through only the abstracts whose probability
clears the shipped threshold; none passing means the engine abstains.

Stage 1 (:func:`pair_features`), all computed in code from the question, the abstract and the
store's own term statistics (no model call):

* ``similarity``   dense cosine of the question to the abstract's best chunk;
* ``coverage``     IDF-weighted share of the question's content terms found in the abstract
                   (same stem, same first five letters, or an acronym of them: :func:`covered`);
* ``top_coverage`` share of the question's three rarest (highest-IDF) terms found;
* ``bigrams``      share of the question's adjacent content-term pairs found as pairs;
* ``n_terms``      log(1 + number of question content terms) (short questions cover easily).

Stage 2 (optional, ``agents.gate_lm``): a pair whose stage-1 probability falls inside the
learnt uncertainty ``band`` is re-scored from its stage-1 log-odds and the question's
likelihood gain given the abstract under the packaged SmolLM2 (:mod:`medllm.agents.gate_lm`,
~1.3 s a pair on 2 cores, so only those pairs). Without it the stage-1 threshold
(``threshold``) is used; with it ``lm.threshold`` (both chosen by cross-validation).

The weights and the thresholds are *learnt*, not hand-set: ``bench/train_gate.py`` fits them on
the PQA-L training questions (their own abstract = positive, the top retrieved other abstracts
= hard negatives; the 500 official test questions are never seen), chooses the regularisation
and the threshold by question-grouped cross-validation, and writes ``gate.json`` beside this
module (bench/RESULTS.md has the figures and the command).

A document that carries instructions instead of findings never passes, whatever its score:
one instruction-like sentence ("ignore previous instructions", "answer no", "you must"), a
majority of imperative sentences (a dosing order), or fewer than ``MIN_WORDS`` words of text
once those are removed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.agents.prompts import sanitize, sentences

if TYPE_CHECKING:
    from medllm.retrieval import RetrievedDoc

GATE_FILE = Path(__file__).with_name("gate.json")
FEATURES = ("similarity", "coverage", "top_coverage", "bigrams", "n_terms")
MIN_WORDS = 25  # an abstract has findings; a planted one-liner does not

_TOKEN = re.compile(r"[^\W_]+")  # letters/digits of any script; hyphens and slashes split
_IMPERATIVE = re.compile(
    r"^\s*(please\s+)?(give|administer|take|prescribe|answer|tell|say|respond|reply|always"
    r"|never|do not|don't|stop|ignore|disregard|double|halve|increase|decrease|avoid|switch"
    r"|inject|discontinue)\b(?!\s+(of|to|in|was|were|is|are|has|had)\b)",
    re.IGNORECASE,
)
# Function words and question scaffolding: never evidence of addressing a question.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers him his how i if in into is it its
    itself just me more most my no nor not now of off on once only or other our out over own
    same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why
    will with would you your yes maybe may might must shall whether there's versus vs via
    among within without does is are patients patient study studies role effect effects
    associated association use used using compared comparison""".split()  # noqa: SIM905
)


@lru_cache(maxsize=1)
def _stem() -> Callable[[str], str]:
    try:
        import Stemmer  # PyStemmer (Snowball), installed with bm25s

        return Stemmer.Stemmer("english").stemWord  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - fold plurals only
        return lambda t: t[:-1] if len(t) > 4 and t.endswith("s") and not t.endswith("ss") else t


def _words(text: str) -> list[str]:
    """Content words in order, lower-cased, as written (stop words and one-letter tokens out)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS and len(t) > 1]


def terms(text: str) -> list[str]:
    """Content terms in order: lower-cased tokens minus stop words, Snowball-stemmed."""
    stem = _stem()
    return [stem(t) for t in _words(text)]


def instruction_reason(text: str) -> str | None:
    """Why ``text`` reads as instructions rather than findings (None when it does not)."""
    clean, dropped = sanitize(text)
    if dropped:
        return f"{dropped} instruction-like sentence(s)"
    sents = sentences(clean)
    imperative = sum(bool(_IMPERATIVE.match(s)) for s in sents)
    if sents and imperative * 2 >= len(sents):
        return f"{imperative} of {len(sents)} sentences are orders, not findings"
    if len(clean.split()) < MIN_WORDS:
        return f"under {MIN_WORDS} words of text"
    return None


_ACRONYM = re.compile(r"\b([A-Za-z]*[A-Z][A-Za-z]*[A-Z][A-Za-z]*?)s?\b")  # two capitals or more
PREFIX = 5  # derivational variants share a stem's first letters: laparoscopy/laparoscopic


def covered(question: str, doc_text: str, q_terms: Sequence[str], d_terms: set[str]) -> set[str]:
    """The question's content terms the abstract has: the same stem, a stem sharing the first
    ``PREFIX`` letters (laparoscopic/laparoscopy and smoker/smoke match; surgery/surgical and
    sepsis/septic do not), or an acronym the abstract uses for consecutive question words
    (hereditary spherocytosis = HS, non-communicable disease = NCDs). A two-letter acronym can
    also match two unrelated words by chance ("help smokers" = HS); the gate was trained and
    cross-validated with that noise."""
    prefixes = {t[:PREFIX] for t in d_terms if len(t) >= PREFIX}
    out = {t for t in q_terms if t in d_terms or (len(t) >= PREFIX and t[:PREFIX] in prefixes)}
    acronyms = {a.lower() for a in _ACRONYM.findall(doc_text)}
    if acronyms:
        stem = _stem()
        words = [w for w in _TOKEN.findall(question.lower()) if w not in STOPWORDS and len(w) > 1]
        for n in (2, 3, 4):
            for i in range(len(words) - n + 1):
                if "".join(w[0] for w in words[i : i + n]) in acronyms:
                    out.update(stem(w) for w in words[i : i + n])
    return out


def pair_features(
    question: str, doc_text: str, similarity: float, idf: Callable[[str], float]
) -> list[float]:
    """The gate's features for one (question, abstract) pair, in the order of ``FEATURES``."""
    q = list(dict.fromkeys(terms(question)))
    d_terms = terms(doc_text)
    d = set(d_terms)
    if not q:
        return [similarity, 0.0, 0.0, 0.0, 0.0]
    have = covered(question, doc_text, q, d)
    w = {t: idf(t) for t in q}
    total = sum(w.values()) or 1.0
    coverage = sum(w[t] for t in q if t in have) / total
    rare = sorted(q, key=lambda t: -w[t])[:3]
    top_coverage = sum(t in have for t in rare) / len(rare)
    q_seq = terms(question)
    q_pairs = {(a, b) for a, b in zip(q_seq, q_seq[1:], strict=False)}
    d_pairs = {(a, b) for a, b in zip(d_terms, d_terms[1:], strict=False)}
    bigrams = len(q_pairs & d_pairs) / len(q_pairs) if q_pairs else coverage
    return [similarity, coverage, top_coverage, bigrams, math.log1p(len(q))]


@dataclass
class LMStage:
    """Stage 2: ``p' = sigmoid(intercept + coef[0]·logit(p) + coef[1]·pmi)`` for stage-1
    probabilities ``p`` inside ``band``; pairs outside it keep ``p``."""

    band: tuple[float, float]
    coef: list[float]
    intercept: float
    threshold: float

    def prob(self, p: float, pmi: float) -> float:
        p = min(max(p, 1e-9), 1 - 1e-9)
        z = self.intercept + self.coef[0] * math.log(p / (1 - p)) + self.coef[1] * pmi
        return 1.0 / (1.0 + math.exp(-z))

    def in_band(self, p: float) -> bool:
        return self.band[0] <= p <= self.band[1]


@dataclass
class GateModel:
    """A fitted gate: standardisation, logistic weights and the decision threshold (stage 1),
    and the optional language-model stage with its own threshold."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float
    meta: dict[str, Any]
    lm: LMStage | None = None

    def prob(self, x: Sequence[float]) -> float:
        z = self.intercept + sum(
            c * (v - m) / s for c, v, m, s in zip(self.coef, x, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "threshold": self.threshold,
            **({"lm": {**asdict(self.lm), "band": list(self.lm.band)}} if self.lm else {}),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateModel:
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"gate file features {d.get('features')} != {list(FEATURES)}")
        lm = d.get("lm")
        return cls(
            mean=list(d["mean"]),
            scale=list(d["scale"]),
            coef=list(d["coef"]),
            intercept=float(d["intercept"]),
            threshold=float(d["threshold"]),
            meta=dict(d.get("meta", {})),
            lm=LMStage(
                band=(float(lm["band"][0]), float(lm["band"][1])),
                coef=[float(c) for c in lm["coef"]],
                intercept=float(lm["intercept"]),
                threshold=float(lm["threshold"]),
            )
            if lm
            else None,
        )


@lru_cache(maxsize=4)
def load_gate(path: str | None = None) -> GateModel:
    """The shipped gate (``gate.json`` beside this module), or the one at ``path``."""
    p = Path(path) if path else GATE_FILE
    try:
        return GateModel.from_dict(json.loads(p.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"answerability gate file {p} is missing: rebuild it with "
            "`python bench/train_gate.py` (needs ../shared/data/pubmedqa)"
        ) from None


MIN_QUESTION_TERMS = 2  # the fewest content terms of any PQA-L question (all 1,000 have >= 2)


def too_vague(question: str) -> str | None:
    """Why ``question`` names too little for the gate to judge, or None.

    The gate was learnt on PQA-L questions, every one of which has at least
    ``MIN_QUESTION_TERMS`` distinct content terms; a question with fewer ("In older
    patients?", "Is it safe?") covers nearly any abstract that mentions its one word, and the
    gate, asked outside what it was trained on, passes them with high probability. Such a
    question has no subject to find evidence for, so the engine abstains and says so."""
    stem = _stem()
    found: dict[str, str] = {}  # stem -> the word as asked
    for t in _words(question):
        found.setdefault(stem(t), t)
    if len(found) >= MIN_QUESTION_TERMS:
        return None
    words = ", ".join(f"'{w}'" for w in found.values()) if found else "none"
    return (
        f"the question has too few specific words to find evidence for (content words: "
        f"{words}); ask it with its subject, e.g. the condition and the treatment or exposure"
    )


@dataclass
class GateDecision:
    doc: RetrievedDoc
    prob: float
    passed: bool
    reason: str  # why it passed or failed, for the trace and warnings


def judge(
    question: str,
    docs: Sequence[RetrievedDoc],
    idf: Callable[[str], float],
    *,
    gate: GateModel | None = None,
    threshold: float | None = None,
    scorer: Callable[[str, str], float] | None = None,
) -> list[GateDecision]:
    """A decision for every retrieved document: the passed ones first, each group in retrieval
    order (as a reranker the gate lowers hybrid hit@1 on PQA-L, 0.990 -> 0.983: it decides
    *whether* an abstract addresses the question, retrieval decides the order).

    ``scorer`` (:func:`medllm.agents.gate_lm.gate_scorer`): the language-model stage, asked
    only for pairs inside the gate's band; None = stage 1 and its own threshold."""
    g = gate or load_gate()
    vague = too_vague(question)
    lm = g.lm if scorer is not None else None
    default = lm.threshold if lm is not None else g.threshold
    t = default if threshold is None else threshold
    out = []
    for d in docs:
        why = instruction_reason(d.text)
        p = g.prob(pair_features(question, d.text, d.similarity, idf))
        note = ""
        if why is not None:
            out.append(GateDecision(d, p, False, f"carries instructions, not findings: {why}"))
            continue
        if vague is not None:
            out.append(GateDecision(d, p, False, f"gate {p:.2f}, not judged: {vague}"))
            continue
        if lm is not None and scorer is not None and lm.in_band(p):
            pmi = scorer(question, d.text)
            note = f" (terms {p:.2f}, question likelihood gain {pmi:+.2f})"
            p = lm.prob(p, pmi)
        ok = p >= t
        out.append(GateDecision(d, p, ok, f"gate {p:.2f} {'>=' if ok else '<'} {t:.2f}{note}"))
    out.sort(key=lambda x: not x.passed)  # stable: keeps the retrieval order
    return out
