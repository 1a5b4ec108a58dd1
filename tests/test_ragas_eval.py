"""RAGAS evaluation without running a judge: the judge's context window, and how failures are
summarised (counts with their reason) on item rows recorded from a real run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from medllm.config import Settings
from medllm.eval.base import RunDir
from medllm.eval.ragas_eval import (
    JUDGE_FREE,
    JUDGED,
    _score,
    _write_report,
    aggregate,
    failure_summary,
    judge_context_window,
    judge_verdict,
)

TOO_LONG = "ValueError: Requested tokens ({}) exceed context window of 2048"


def _ok(v: float = 1.0) -> dict[str, Any]:
    return {"value": v, "status": "ok"}


def _err(msg: str, status: str = "error") -> dict[str, Any]:
    return {"value": None, "status": status, "error": msg}


def _item(pmid: str, **judged: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": pmid,
        "gold": "yes",
        "retrieved": [pmid],
        "answer": "No yes/no verdict: ...",
        "answer_label": None,
        "exact_match": None,
        "abstained": False,
        "scores": {**{k: _ok() for k in JUDGE_FREE}, **judged},
    }


def _recorded() -> list[dict[str, Any]]:
    """The two items of `medllm eval ragas --limit 2 --judge smollm2-135m-instruct` with the
    judge at generation.context_window 2048 (token counts as recorded)."""
    counts = [(2687, 2224, 2343, 2235), (2431, 2254, 2077, 2139)]
    return [
        _item(pmid, **{name: _err(TOO_LONG.format(n)) for name, n in zip(JUDGED, ns, strict=True)})
        for pmid, ns in zip(("12377809", "26163474"), counts, strict=True)
    ]


def test_errors_are_reported_with_their_reason(tmp_path: Path) -> None:
    items = _recorded()
    m = aggregate(items, [*JUDGE_FREE, *JUDGED])
    f = m["metrics"]["faithfulness"]
    assert (f["scored"], f["error"], f["mean"]) == (0, 2, None)
    # Messages that differ only in their token counts are one reason, shown as first seen.
    assert f["why"] == {"error": TOO_LONG.format(2687)}
    assert failure_summary(f) == (
        f"parse errors 0  no verdict 0  errors 2 ({TOO_LONG.format(2687)})"
    )
    assert "why" not in m["metrics"]["id_context_recall"]
    assert failure_summary(m["metrics"]["id_context_recall"]) == (
        "parse errors 0  no verdict 0  errors 0"
    )
    verdict = judge_verdict(m)
    assert verdict is not None and "none of the 4 judged metrics" in verdict

    run = RunDir.open(
        tmp_path / "run",
        {
            "model": "m",
            "judge": "j",
            "embedding": "e",
            "retrieval": "hybrid",
            "k": 5,
            "collection": "c",
        },
        {},
    )
    _write_report(run, m)
    text = (run.path / "report.md").read_text()
    assert f"- context_recall, errors 2: `{TOO_LONG.format(2235)}`" in text
    assert verdict in text


class _ParsingMetric:
    """A metric whose judge said ``output``: RAGAS' own parser (its retries already used up)
    reads it, as in a real run after the fix-the-format prompts also failed."""

    def __init__(self, output: str) -> None:
        self.output = output

    async def single_turn_ascore(self, sample: Any) -> float:
        from langchain_core.prompt_values import StringPromptValue
        from ragas.metrics._faithfulness import StatementGeneratorOutput
        from ragas.prompt.pydantic_prompt import RagasOutputParser

        parser: Any = RagasOutputParser(pydantic_object=StatementGeneratorOutput)
        prompt = StringPromptValue(text="q")
        await parser.parse_output_string(self.output, prompt, None, None, retries_left=0)
        return 1.0


def test_parse_errors_name_the_judges_output_and_mixed_reasons_count() -> None:
    prose = "The statements are: 1. The anal sphincter became shorter"
    rows = [
        asyncio.run(_score(_ParsingMetric(out), None)) for out in (prose, prose + " and thicker")
    ]
    rows.append(asyncio.run(_score(_ParsingMetric('{"statement": ["x"]}'), None)))
    assert [r["status"] for r in rows] == ["parse_error"] * 3
    assert rows[0]["error"].startswith(
        "RagasOutputParserException (retries used up), last: OutputParserException: "
        f"Invalid json output: {prose}"
    )
    assert "Failed to parse StatementGeneratorOutput" in rows[2]["error"]
    items = [_item(str(i), faithfulness=r) for i, r in enumerate(rows)]
    items.append(_item("3", faithfulness=_err(TOO_LONG.format(3000))))
    items.append(_item("4", faithfulness={"value": None, "status": "no_verdict"}))
    items.append(_item("5", faithfulness=_ok(0.5)))
    m = aggregate(items, ["faithfulness"])
    f = m["metrics"]["faithfulness"]
    assert (f["scored"], f["parse_error"], f["error"], f["no_verdict"]) == (1, 3, 1, 1)
    assert f["mean"] == 0.5
    # The two prose outputs are one reason, the JSON missing its field another: one line.
    why = f["why"]["parse_error"]
    assert why.startswith("2 of 3: RagasOutputParserException (retries used up), last: ")
    assert "Invalid json output: The statements" in why
    assert "\n" not in why and len(why) <= len("2 of 3: ") + 160
    assert set(f["why"]) == {"parse_error", "error"}  # no message for a missing verdict
    assert "no verdict 1  errors 1 (ValueError: Requested tokens (3000)" in failure_summary(f)
    assert judge_verdict(m) is None  # it scored one item


def test_judge_context_window_is_the_models_trained_length() -> None:
    s = Settings.load().with_overrides(models={"backend": "llama-cpp"})
    assert s.generation.context_window == 2048
    # SmolLM2-135M's GGUF says llama.context_length 8192.
    assert judge_context_window(s, "smollm2-135m-instruct") == 8192
    assert s.generation.context_window == 2048  # the answering model's setting is untouched
    big = s.with_overrides(generation={"context_window": 32768})
    assert judge_context_window(big, "smollm2-135m-instruct") == 8192  # capped at the model's
