"""PubMedQA (PQA-L) as the RAG tutorial evaluates it: no-context, gold-context and RAG.

* ``--split test``: the 500 PMIDs of the official ``test_ground_truth.json``; a complete test
  run writes ``predictions.json`` (``{pmid: label}``, all and only those PMIDs), the format the
  official PubMedQA ``evaluation.py`` reads.
* ``--split all``: the 1,000 questions of PQA-L (the tutorial's protocol).

Prompts come from :mod:`medllm.finetune.tasks` (the format adapters are trained on). With an
adapter fine-tuned on PubMedQA, the gold-context prompt takes that adapter's own prompt
settings from its ``config.yaml`` (abstract sections kept, words cut, system turn), so an
adapter is scored on the format it learnt; the settings used are part of the run's identity.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm import pubmedqa
from medllm.errors import DataError
from medllm.eval.base import RunDir
from medllm.eval.label import LabelItem, LabelTask
from medllm.metrics import macro_f1

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)

MODES = ("no-context", "gold-context", "rag", "leave-gold-out")
ENGINE_MODES = ("rag", "leave-gold-out")  # asked through the engine (medllm.eval.engine_eval)
SPLITS = ("test", "all")
# Published figures on the official test split (Jin et al., 2019).
BASELINES = {"majority class (official)": 0.552, "single human (official)": 0.78}


def no_context_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question: {question}\n\nAnswer with yes, no or maybe."}]


def data_files(settings: Settings, source: str | Path | None = None) -> tuple[Path, Path]:
    """``ori_pqal.json`` and ``test_ground_truth.json`` (local dir/file, or downloaded)."""
    src = source if source is not None else settings.eval.pubmedqa_dir
    pqal = pubmedqa.resolve_source(src, settings.paths.data_dir, "ori_pqal.json")
    gt_src = pqal.parent if src is not None else None
    gt = pubmedqa.resolve_source(gt_src, settings.paths.data_dir, "test_ground_truth.json")
    return pqal, gt


def load_split(
    pqal: Path, gt: Path, split: str
) -> tuple[list[pubmedqa.PubMedQARecord], dict[str, str]]:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    records = pubmedqa.load(pqal, strict=True).records
    test = pubmedqa.load_test_pmids(gt)
    if split == "all":
        return records, test
    by_id = {r.pmid: r for r in records}
    missing = [p for p in test if p not in by_id]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(test)} test PMIDs are not in {pqal.name} "
            f"(e.g. {missing[0]}): the file is not the official PQA-L",
            path=pqal,
        )
    for p, lab in test.items():
        if by_id[p].final_decision not in (None, lab):
            raise DataError(
                f"label {by_id[p].final_decision!r} disagrees with {gt.name} ({lab!r})",
                path=pqal,
                record=p,
                field="final_decision",
            )
    return [by_id[p] for p in test], test


def adapter_prompt_format(adapter: str | Path | None) -> dict[str, Any]:
    """The PubMedQA prompt settings an adapter was trained with ({} when it has none: no
    adapter, not a medllm adapter, or one trained on another task, or on the defaults)."""
    if not adapter or not (Path(adapter) / "config.yaml").is_file():
        return {}
    from medllm.finetune.config import load_config

    t = load_config(Path(adapter) / "config.yaml").task
    if t.name != "pubmedqa":
        return {}
    fmt = {
        "context_sections": t.context_sections,
        "max_context_words": t.max_context_words,
        "system_prompt": t.system_prompt,
    }
    return {k: v for k, v in fmt.items() if v}


def pubmedqa_task(
    settings: Settings,
    *,
    mode: str,
    split: str = "test",
    source: str | Path | None = None,
) -> LabelTask:
    from medllm.finetune import tasks

    if mode not in MODES:
        raise DataError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode in ENGINE_MODES:
        raise DataError(
            f"mode {mode!r} asks the engine, not the label scorer: use engine_items and "
            "medllm.eval.engine_eval.run_engine_eval (the label-scoring modes are no-context "
            "and gold-context)"
        )
    pqal, gt = data_files(settings, source)
    records, test = load_split(pqal, gt, split)
    fmt = adapter_prompt_format(settings.models.adapter) if mode == "gold-context" else {}
    items = []
    for r in records:
        if r.final_decision is None:
            raise DataError("unlabelled record", path=pqal, record=r.pmid, field="final_decision")
        msgs = None
        if mode == "no-context":
            msgs = no_context_messages(r.question)
        elif mode == "gold-context":
            msgs = tasks.pubmedqa_messages(
                r.question,
                r.sections_text(fmt.get("context_sections")),
                max_context_words=fmt.get("max_context_words"),
                system=fmt.get("system_prompt"),
            )
        items.append(LabelItem(r.pmid, r.final_decision, msgs))
    identity: dict[str, Any] = {"split": split}
    if fmt:
        identity["prompt_format"] = fmt
    variant = mode
    prepare = None

    def finalize(run: RunDir, recs: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        if split != "test":
            return
        if {r["id"] for r in recs} != set(test):
            metrics["predictions"] = "not written: the run covers part of the test split"
            return
        write_predictions(run.path / "predictions.json", recs, test)
        metrics["predictions"] = "predictions.json"

    return LabelTask(
        name="pubmedqa",
        variant=variant,
        data_path=pqal,
        options=tasks.PUBMEDQA_OPTIONS,
        items=items,
        identity=identity,
        baselines=dict(BASELINES),
        prepare=prepare,
        finalize=finalize,
    )


def engine_items(
    settings: Settings, *, split: str = "test", source: str | Path | None = None
) -> tuple[list[Any], Path]:
    """PubMedQA questions as engine-evaluation items (gold document = the question's PMID)."""
    from medllm.eval.engine_eval import YesNoItem

    pqal, gt = data_files(settings, source)
    records, _ = load_split(pqal, gt, split)
    return [YesNoItem(r.pmid, r.question, r.final_decision, [r.pmid]) for r in records], pqal


def write_predictions(path: Path, records: list[dict[str, Any]], test: dict[str, str]) -> None:
    preds = {r["id"]: r["pred"] for r in records}
    check_predictions(preds, test, path)
    path.write_text(json.dumps({p: preds[p] for p in test}, indent=2))


def check_predictions(preds: Any, test: dict[str, str], path: Path | str) -> None:
    """The official scorer's contract: ``{pmid: yes|no|maybe}`` for all and only the test PMIDs."""
    if not isinstance(preds, dict):
        raise DataError("expected a JSON object {pmid: label}", path=path)
    bad = [(k, v) for k, v in preds.items() if v not in pubmedqa.LABELS]
    if bad:
        raise DataError(
            f"label must be yes/no/maybe, got {bad[0][1]!r}", path=path, record=bad[0][0]
        )
    extra = [p for p in preds if p not in test]
    missing = [p for p in test if p not in preds]
    if extra or missing:
        raise DataError(
            f"not a PubMedQA test-split prediction file: {len(missing)} test PMIDs missing"
            + (f" (e.g. {missing[0]})" if missing else "")
            + f", {len(extra)} PMIDs not in the test split"
            + (f" (e.g. {extra[0]}; from another dataset?)" if extra else ""),
            path=path,
        )


def score_predictions(
    pred_path: Path, settings: Settings, source: str | Path | None = None
) -> dict[str, Any]:
    """Accuracy and macro-F1 of a predictions file, as the official ``evaluation.py`` computes."""
    _, gt = data_files(settings, source)
    test = pubmedqa.load_test_pmids(gt)
    try:
        preds = json.loads(Path(pred_path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read predictions: {e}", path=pred_path) from None
    check_predictions(preds, test, pred_path)
    gold = [test[p] for p in test]
    pred = [preds[p] for p in test]
    acc = sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)
    return {"n": len(gold), "accuracy": acc, "macro_f1": macro_f1(gold, pred, pubmedqa.LABELS)}
