"""``medllm calibrate``: measure the engine's label scorer on PQA-L training questions.

The questions outside the official test split are asked through the engine (retrieval,
answerability gate, the engine's label prompt); :func:`medllm.scoring.calibrate.fit` turns the
scorer's probabilities into a calibration and a label threshold, or a verdict of no skill.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.scoring.calibrate import (
    ADAPTER_FILE,
    PROMPT_VERSION,
    LabelCalibration,
    calibration_path,
    fit,
    scorer_key,
)

if TYPE_CHECKING:
    from medllm.config import Settings

MIN_ANSWERED = 20  # fewer answered questions cannot choose a threshold by cross-validation
TRAIN_QUESTIONS = 500  # PQA-L's 1,000 less the official test split's 500


def calibrate_pubmedqa(
    settings: Settings,
    *,
    source: str | Path | None = None,
    limit: int | None = None,
    show_progress: bool = True,
    engine: Any = None,
) -> tuple[LabelCalibration, Path]:
    """Measure and calibrate the engine's label scorer on the PQA-L questions outside the
    official test split (asked through the engine: retrieval, gate, label prompt); save it."""
    from datetime import UTC, datetime

    from tqdm.auto import tqdm

    from medllm import pubmedqa
    from medllm.agents.prompts import LABELS
    from medllm.errors import DataError, MedllmError
    from medllm.eval.base import check_limit
    from medllm.eval.pubmedqa import data_files

    check_limit(limit)
    if limit is not None and limit < MIN_ANSWERED:
        raise DataError(
            f"--limit {limit} is too few: calibration needs at least {MIN_ANSWERED} answered "
            f"questions (more give a steadier threshold; all {TRAIN_QUESTIONS} by default)"
        )
    pqal, gt = data_files(settings, source)
    test = pubmedqa.load_test_pmids(gt)
    records = [r for r in pubmedqa.load(pqal, strict=True).records if r.pmid not in test]
    records = records[:limit] if limit else records
    raw = settings.with_overrides(agents={"labels": "uncalibrated"})
    if engine is None:
        from medllm.agents.engine import Engine

        engine = Engine.from_settings(raw)
    else:
        engine.settings = raw
    served = engine.backend.model if engine.backend.name == "openai-compatible" else None
    probs, gold, abstained = [], [], 0
    for r in tqdm(records, desc="calibrating labels", disable=not show_progress, unit="q"):
        p = engine.plan(r.question, mode="rag")
        if p.abstained or p.raw_probs is None:
            abstained += 1
            continue
        probs.append(p.raw_probs)
        gold.append(r.final_decision)
    if len(probs) < MIN_ANSWERED:
        hint = (
            "ingest PubMedQA first (`medllm ingest pubmedqa`) so that the engine finds their "
            "abstracts"
            if abstained > len(records) // 2
            else f"use a larger --limit (or none: all {TRAIN_QUESTIONS} training questions)"
        )
        raise MedllmError(
            f"only {len(probs)} of {len(records)} questions were answered ({abstained} "
            f"abstained); calibration needs at least {MIN_ANSWERED}: {hint}"
        )
    cal = fit(
        probs,
        gold,
        LABELS,
        scorer=scorer_key(settings, served),
        meta={
            "data": str(pqal),
            "items": f"PQA-L outside the official test split: {len(records)} asked, "
            f"{abstained} abstained (not used)",
            "model": served or settings.models.llm,
            "backend": engine.backend.describe(),
            "adapter": str(settings.models.adapter) if settings.models.adapter else None,
            "prompt": PROMPT_VERSION,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": "medllm calibrate",
        },
    )
    path = calibration_path(settings, served)
    cal.save(path)
    if settings.models.adapter is not None and Path(settings.models.adapter).is_dir():
        cal.save(Path(settings.models.adapter) / ADAPTER_FILE)  # the quality travels with it
    return cal, path
