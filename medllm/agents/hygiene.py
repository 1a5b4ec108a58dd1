"""Generation hygiene, the same for every backend: whole sentences, no degenerate repetition.

Small models loop ("The answer is: The answer is: ...") and stop mid-sentence when the token
budget runs out. :class:`TextGuard` sits between the model's stream and the user: it releases
text one complete sentence at a time, stops the generation when a sentence repeats an earlier
one — whole, or as the tail of a longer one ("The abstracts report that the study was small."
then "The study was small."), for sentences of four words or more — or would make any word
4-gram occur ``max_repeats + 1`` times, and at the end drops an unfinished last sentence
(unless nothing else was said).
"""

from __future__ import annotations

import re
from collections import Counter

_END = re.compile(r"[.!?](?:[\"')\]]+)?(?=\s)|\n")
_WORD = re.compile(r"\w+")
_CLOSED = re.compile(r"[.!?][\"')\]]*\s*$")


def ngrams(text: str, n: int = 4) -> Counter[tuple[str, ...]]:
    w = [x.lower() for x in _WORD.findall(text)]
    return Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))


def max_ngram_repeats(text: str, n: int = 4) -> int:
    """How often the most frequent word ``n``-gram of ``text`` occurs (0 for short text)."""
    c = ngrams(text, n)
    return max(c.values(), default=0)


class TextGuard:
    def __init__(self, n: int = 4, max_repeats: int = 2):
        self.n, self.max_repeats = n, max_repeats
        self.emitted = ""
        self.buffer = ""
        self.stopped = False
        self.reason: str | None = None
        self._seen: set[str] = set()

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
            if self._ok(sentence):
                out += sentence
                self.emitted += sentence
            else:
                self.stopped = True
                self.buffer = ""
        return out

    def finish(self) -> str:
        """The unfinished tail, when it is all there is; otherwise nothing (ends cleanly)."""
        tail, self.buffer = self.buffer, ""
        if self.stopped or not tail.strip():
            return ""
        if _CLOSED.search(tail) or not self.emitted.strip():
            if self._ok(tail):
                self.emitted += tail
                return tail
            self.stopped = True
            return ""
        self.reason = self.reason or "dropped an unfinished last sentence"
        return ""
