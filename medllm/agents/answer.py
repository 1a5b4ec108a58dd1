"""The answer object returned by the engine, the Python API, the CLI and the server."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Route = Literal["direct", "rag"]

INSUFFICIENT = "There is insufficient evidence in the indexed literature to answer this question."


@dataclass
class Citation:
    """One retrieved abstract the answer rests on."""

    number: int  # the [n] used in the answer text
    pmid: str  # the document id (PMID for PubMedQA)
    score: float  # the retrieval mode's own score
    similarity: float  # dense cosine similarity of the question to the abstract
    sentence: str  # the abstract sentence that best supports the answer
    year: int | None = None
    title: str | None = None


@dataclass
class Answer:
    question: str
    answer: str
    label: str | None  # yes | no | maybe for yes/no research questions, else None
    confidence: float | None  # calibrated probability of ``label`` (None when no label)
    citations: list[Citation]
    route: Route
    route_reason: str
    abstained: bool
    mode: str  # the mode asked for: auto | rag | direct
    model: str
    backend: str  # what scored and generated: transformers | llama-cpp | openai-compatible
    retrieval_query: str | None = None  # the (condensed) query sent to retrieval
    label_probs: dict[str, float] | None = None  # calibrated when the model has a calibration
    label_note: str | None = None  # why a yes/no question got no label, in words
    # ... as a code: below-threshold | no-skill | uncalibrated (None: labelled, or not asked)
    label_withheld: str | None = None
    quoted: bool = False  # the text quotes the cited abstracts (agents.answer_text), not generated
    direct_answer: bool = False  # the text is the model's own answer, from no indexed source
    gate_best: float | None = None  # highest answerability-gate probability among retrieved
    gate: list[dict[str, Any]] = field(default_factory=list)  # per retrieved doc: prob, passed
    timing: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)  # prompt/completion/total tokens
    strategy: str = "router"  # router | agent (agents.strategy)
    # the trace: searches, the agent's thoughts and tool calls (tool, args, returned ids, ms),
    # invalid actions, budget stops, a fallback to the router
    steps: list[dict[str, Any]] = field(default_factory=list)
    agent: dict[str, Any] | None = None  # agent loop: kind, rounds, tool_calls, stop, fallback

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """Human-readable: the answer, then numbered citations with PMID and year."""
        lines = [self.answer]
        if self.label:
            lines.append(f"\nLabel: {self.label} (calibrated probability {self.confidence:.2f})")
        elif self.label_note:
            probs = ", ".join(f"{k} {v:.2f}" for k, v in (self.label_probs or {}).items())
            lines.append(f"\nLabel: none — {self.label_note}" + (f" [{probs}]" if probs else ""))
        if self.citations:
            lines.append("\nSources:")
            lines += [format_citation(c) for c in self.citations]
        # what the checks took out of the text (a verdict, an invented PMID, a planted
        # document): said here too, not only in --json, so a short answer is not a mystery;
        # and a chat follow-up that cites only the previous answer's sources
        notes = [w for w in self.warnings if w.startswith(_SHOWN_NOTES)]
        if notes:
            lines.append("")
            lines += [f"Note: {w}" for w in notes]
        return "\n".join(lines)


# how a chat follow-up citing only the previous answer's sources is noted (medllm.assistant)
SAME_SOURCES = "same sources"
_SHOWN_NOTES = ("dropped ", "removed ", "left out ", f"{SAME_SOURCES} ")


def format_citation(c: Citation) -> str:
    year = f", {c.year}" if c.year else ""
    return f"[{c.number}] PMID {c.pmid}{year} (similarity {c.similarity:.2f}): {c.sentence}"
