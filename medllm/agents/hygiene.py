"""Generation hygiene, the same for every backend: whole sentences, no degenerate repetition.

Small models loop ("The answer is: The answer is: ...") and stop mid-sentence when the token
budget runs out. :class:`TextGuard` sits between the model's stream and the user: it releases
text one complete sentence at a time, stops the generation when a sentence repeats an earlier
one — whole, or as the tail of a longer one ("The abstracts report that the study was small."
then "The study was small."), for sentences of four words or more — or would make any word
4-gram occur ``max_repeats + 1`` times, and at the end drops an unfinished last sentence
(unless nothing else was said).

For a yes/no question it also keeps the text in line with the label the engine shows
(``verdicts=True``): a generated sentence that states a verdict ("No, …", "The answer is
yes.") other than that label — any verdict when no label is shown (a model with no measured
skill, no calibration, or a probability below its threshold) — is dropped, as are the label
restated with (almost) nothing else ("The answer is no." after "No.") and an answer preamble
left with nothing after it ("The answer is:"). A backend that cannot continue the
engine's label sentence (an OpenAI-compatible server) otherwise writes its own verdict after
"No yes/no verdict: …" — an uncalibrated label in prose.
"""

from __future__ import annotations

import re
from collections import Counter

_END = re.compile(r"[.!?](?:[\"')\]]+)?(?=\s)|\n")
_WORD = re.compile(r"\w+")
_CLOSED = re.compile(r"[.!?][\"')\]]*\s*$")
_ANSWER_IS = (
    r"(?:(?:my|the|our)\s+(?:(?:short|final|simple)\s+)?)?answer"
    r"(?:\s+to\s+(?:this|the|your)\s+question)?\s+(?:is|would\s+be)\s*:?"
)
_VERDICT = re.compile(
    r"^[\W_]*(?:"
    r"(?P<a>yes|no|maybe)[*_\"'\u201d\u2019)\]]*(?:\s*[,.;:!\u2013\u2014-]|\s*$)"  # "No, …" "Yes."
    r"|(?:so|thus|therefore|hence|in\s+(?:short|conclusion|summary)),?\s+"
    rf"(?:{_ANSWER_IS}\s*)?[\W_]*(?P<b>yes|no|maybe)\b"  # "So, yes." "In short, no."
    rf"|{_ANSWER_IS}\s*[\W_]*(?P<c>yes|no|maybe)\b"  # "The answer is: No."
    r")",
    re.I,
)
_PREAMBLE = re.compile(rf"^[\W_]*{_ANSWER_IS}[\W_]*$", re.I)


def _opening_verdict(sentence: str) -> tuple[str, int] | None:
    """(verdict, where its statement ends) for a sentence opening with one, else None."""
    m = _VERDICT.match(sentence)
    return ((m.group("a") or m.group("b") or m.group("c")).lower(), m.end()) if m else None


def verdict_of(sentence: str) -> str | None:
    """The yes/no/maybe verdict a sentence opens with ("No, …", "The answer is yes.",
    "In short, no."), lower case; None for any other sentence (including "No evidence …" and
    the engine's own "No yes/no verdict: …")."""
    found = _opening_verdict(sentence)
    return found[0] if found else None


def ngrams(text: str, n: int = 4) -> Counter[tuple[str, ...]]:
    w = [x.lower() for x in _WORD.findall(text)]
    return Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))


def max_ngram_repeats(text: str, n: int = 4) -> int:
    """How often the most frequent word ``n``-gram of ``text`` occurs (0 for short text)."""
    c = ngrams(text, n)
    return max(c.values(), default=0)


class TextGuard:
    def __init__(
        self, n: int = 4, max_repeats: int = 2, *, verdicts: bool = False, label: str | None = None
    ):
        """``verdicts``: the text answers a yes/no question whose shown label is ``label``
        (None: no label shown) — generated sentences stating another verdict are dropped."""
        self.n, self.max_repeats = n, max_repeats
        self.verdicts, self.label = verdicts, (label or None) and label.lower()
        self.emitted = ""
        self.generated = ""  # what feed/finish released (the model's text, not the seed)
        self.dropped_verdicts = 0
        self.dropped_restated = 0  # bare restatements of the label ("The answer is no.")
        self._gap = False  # a dropped sentence took the space before the next one with it
        self.buffer = ""
        self.stopped = False
        self.reason: str | None = None
        self._seen: set[str] = set()

    def _off_label(self, sentence: str) -> bool:
        """A sentence to drop: a verdict other than the shown label, the label restated with
        (almost) nothing else ("No.", "The answer is no." after "No."), or a bare preamble."""
        if not self.verdicts:
            return False
        if _PREAMBLE.match(sentence):
            return True
        found = _opening_verdict(sentence)
        if found is None:
            return False
        verdict, end = found
        if verdict != self.label:
            self.dropped_verdicts += 1
            return True
        if len(_WORD.findall(sentence[end:])) < 2:  # the label sentence says it already
            self.dropped_restated += 1
            return True
        return False

    def seed(self, text: str) -> str:
        """Start from text the caller decided (a label prefix): its complete sentences are
        returned to be shown now and are never repeated; an unfinished last part ("The
        abstracts report that") waits in the buffer for the model to finish it, and is dropped
        with the rest if the model never does."""
        ends = list(_END.finditer(text))
        cut = ends[-1].end() if ends else 0
        head, self.buffer = text[:cut], text[cut:] + self.buffer
        self.emitted += head
        for sent in _END.split(head):
            key = " ".join(_WORD.findall(sent.lower()))
            if len(key.split()) >= 3:
                self._seen.add(key)
        return head

    def _ok(self, sentence: str) -> bool:
        key = " ".join(_WORD.findall(sentence.lower()))
        if key and key in self._seen and len(key.split()) >= 3:
            self.reason = "a sentence repeated an earlier one"
            return False
        if len(key.split()) >= 4 and any(s.endswith(" " + key) for s in self._seen):
            self.reason = "a sentence repeated the end of an earlier one"
            return False
        if max_ngram_repeats(self.emitted + sentence, self.n) > self.max_repeats:
            self.reason = f"a {self.n}-word phrase repeated more than {self.max_repeats} times"
            return False
        if key:
            self._seen.add(key)
        return True

    def feed(self, delta: str) -> str:
        """Text that may be shown now (complete, non-repeating sentences)."""
        if self.stopped:
            return ""
        self.buffer += delta
        out = ""
        while not self.stopped:
            m = _END.search(self.buffer)
            if not m:
                break
            sentence, self.buffer = self.buffer[: m.end()], self.buffer[m.end() :]
            if not sentence.strip():
                out += sentence
                self.emitted += sentence
                continue
            if self._off_label(sentence):
                self._gap = self._gap or sentence[:1].isspace()  # its space parted two others
                continue
            if self._gap and self.emitted[-1:] not in ("", " ", "\n") and sentence[:1] != " ":
                sentence = " " + sentence
            self._gap = False
            if self._ok(sentence):
                out += sentence
                self.emitted += sentence
                self.generated += sentence
            else:
                self.stopped = True
                self.buffer = ""
        return out

    def finish(self) -> str:
        """The unfinished tail, when it is all there is; otherwise nothing (ends cleanly)."""
        tail, self.buffer = self.buffer, ""
        if self.stopped or not tail.strip() or self._off_label(tail):
            return ""
        if _CLOSED.search(tail) or not self.emitted.strip():
            if self._ok(tail):
                self.emitted += tail
                self.generated += tail
                return tail
            self.stopped = True
            return ""
        self.reason = self.reason or "dropped an unfinished last sentence"
        return ""
