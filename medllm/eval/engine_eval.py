"""Evaluate the path users get: the engine itself (retrieval, gate, selective label, text).

Every yes/no question is asked through :class:`medllm.agents.engine.Engine` exactly as
``medllm ask`` asks it (mode ``auto``, the same prompt, gate, calibrated labels and generation
hygiene). Reported:

* **coverage** (answered / all) and abstentions; **label coverage** (labelled / all) and
  **accuracy on labelled items** (Wilson 95 %), beside the majority class;
* **citation precision / recall** against the gold document ids (RAGAS' ID-based context
  precision / recall: no judge needed) over the answered items;
* the calibrated label's ECE and a **risk–coverage** curve of the scorer on answered items;
* degenerate text: answers whose most repeated word 4-gram occurs three or more times.

``leave_gold_out``: each question is asked with its own gold documents hidden from retrieval
(a metadata filter; nothing re-ingested). Every answer there is unsupported by its gold
evidence, so the right behaviour is to abstain.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import DataError, MedllmError
from medllm.eval.base import (
    RunDir,
    RunResult,
    base_config,
    check_limit,
    default_run_path,
    run_items,
    sha256_file,
)

if TYPE_CHECKING:
    from medllm.agents.engine import Engine
    from medllm.config import Settings

logger = logging.getLogger(__name__)

OPTIONS = ("yes", "no", "maybe")


@dataclass
class YesNoItem:
    id: str
    question: str
    gold: str | None  # yes | no | maybe, or None when unlabelled
    gold_docs: list[str] = field(default_factory=list)


def run_engine_eval(
    items: list[YesNoItem],
    settings: Settings,
    *,
    name: str,
    data_path: Path,
    leave_gold_out: bool = False,
    generate: bool = True,
    out: Path | None = None,
    limit: int | None = None,
    fresh: bool = False,
    show_progress: bool = True,
    engine: Engine | None = None,
    extra_identity: dict[str, Any] | None = None,
) -> RunResult:
    """Ask every item through the engine; write items.jsonl, metrics.json and report.md."""
    from medllm.models.backend import resolve_backend, uses_server
    from medllm.scoring.calibrate import find_calibration, scorer_key
    from medllm.storage import filters

    check_limit(limit)
    every_id = [it.id for it in items]
    items = items[:limit] if limit else items
    if not items:
        raise DataError(f"{name}: no items to evaluate", path=data_path)
    if leave_gold_out and not all(it.gold_docs for it in items):
        missing = next(it.id for it in items if not it.gold_docs)
        raise DataError(
            "leave-gold-out needs gold document ids (a 'gold' list of the documents that "
            "answer it) on every question; this one has none",
            path=data_path,
            record=missing,
            field="gold",
        )
    filters.parse(settings.retrieval.where)  # a bad --where stops here, before any run directory
    variant = "leave-gold-out" if leave_gold_out else "rag"
    strategy = settings.agents.strategy
    if strategy != "router":  # the router's run directories keep their names
        variant += f"-{strategy}"
    if engine is None and uses_server(settings):
        # A server is asked for its model now (one GET /models): the run is named after the
        # model that answers, and a server that cannot be used leaves no run directory.
        from medllm.agents.engine import Engine

        engine = Engine.from_settings(settings)
    served = None
    if engine is not None and engine.backend.name == "openai-compatible":
        served = engine.backend.model
    # llama-cpp and transformers runs of one model score differently: never one run directory
    backend = engine.backend.name if engine is not None else resolve_backend(settings)
    cal = find_calibration(settings, served)
    identity = {
        "task": name,
        "variant": f"engine-{variant}",
        "dataset": data_path.name,
        "data_sha256": sha256_file(data_path),
        "model": served or settings.models.llm,
        "backend": backend,
        "adapter": str(settings.models.adapter) if settings.models.adapter else None,
        "collection": settings.retrieval.collection,
        "retrieval": settings.retrieval.mode,
        "k": settings.retrieval.top_k,
        "gate_threshold": settings.agents.gate_threshold,
        "gate_lm": settings.agents.gate_lm,
        "labels": settings.agents.labels,
        "strategy": strategy,
        **(
            {
                "agent_budget": {
                    "max_rounds": settings.agents.max_rounds,
                    "max_tool_calls": settings.agents.max_tool_calls,
                    "max_seconds": settings.agents.max_seconds,
                    "max_invalid": settings.agents.max_invalid,
                }
            }
            if strategy == "agent"
            else {}
        ),
        "label_calibration": scorer_key(settings, served) if cal else None,
        "generate": generate,
        **({"where": settings.retrieval.where} if settings.retrieval.where else {}),
        **(extra_identity or {}),
    }
    path = out or default_run_path(
        settings,
        name,
        f"engine-{variant}",
        served or settings.models.llm,
        "" if backend == "llama-cpp" else backend,  # the in-process default keeps its name
        where=settings.retrieval.where,
    )
    config = base_config(
        settings,
        data={"path": str(data_path), "n_items": len(items), "limit": limit},
        evaluated="the engine (medllm.agents.engine.Engine.ask, mode auto): the path users get",
        label_calibration=None if cal is None else {"scorer": cal.scorer, "cv": cal.cv},
    )
    run = RunDir.open(path, identity, config, fresh=fresh, default=out is None)
    by_id = {it.id: it for it in items}
    holder: dict[str, Any] = {"engine": engine}

    def load() -> None:
        if holder["engine"] is None:
            from medllm.agents.engine import Engine

            holder["engine"] = Engine.from_settings(settings)

    def step(ids: list[str]) -> list[dict[str, Any]]:
        load()
        return [_ask(holder["engine"], by_id[i], leave_gold_out, generate) for i in ids]

    t0 = time.perf_counter()
    try:
        records = run_items(
            run,
            [it.id for it in items],
            step,
            batch_size=1,
            desc=f"{name} {variant}",
            show_progress=show_progress,
            known=every_id,
            prepare=load,  # not in the first item's latency
        )
    except MedllmError:  # e.g. no such store: a run that asked nothing leaves nothing behind
        if run.created and not run.done():
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    metrics = engine_metrics(records)
    metrics["identity"] = identity
    metrics["timing"] = {"seconds_this_call": round(time.perf_counter() - t0, 2)}
    run.write_json("metrics.json", metrics)
    write_report(run, metrics, title=f"{name} — engine, {variant}")
    return RunResult(run.path, metrics, records)


def _ask(engine: Engine, it: YesNoItem, leave_gold_out: bool, generate: bool) -> dict[str, Any]:
    from medllm.agents.hygiene import max_ngram_repeats

    exclude = it.gold_docs if leave_gold_out else ()
    t0 = time.perf_counter()
    if generate:
        a = engine.ask(it.question, mode="auto", exclude=exclude)
    else:
        p = engine.plan(it.question, mode="auto", exclude=exclude)
        a = engine._answer(p, p.prefix)
    cited = [c.pmid for c in a.citations]
    return {
        "id": it.id,
        "gold": it.gold,
        "gold_docs": it.gold_docs,
        "answered": not a.abstained,
        "label": a.label,
        "labelled": a.label is not None,
        "correct": None if a.label is None or it.gold is None else a.label == it.gold,
        "confidence": a.confidence,
        "probs": a.label_probs,
        "label_note": a.label_note,
        "label_withheld": a.label_withheld,
        "cited": cited,
        "gold_cited": bool(set(cited) & set(it.gold_docs)),
        "gate_best": a.gate_best,
        "max_4gram_repeats": max_ngram_repeats(a.answer),
        "answer": a.answer,
        "warnings": a.warnings,
        "latency_s": round(time.perf_counter() - t0, 3),
        "strategy": a.strategy,
        "agent": a.agent,
        "steps": a.steps,
    }


def engine_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    from medllm.metrics import aurc, reliability, risk_coverage, wilson

    n = len(records)
    answered = [r for r in records if r["answered"]]
    labelled = [r for r in answered if r["labelled"] and r["gold"] is not None]
    with_gold = [r for r in answered if r["gold_docs"]]
    golds = [r["gold"] for r in records if r["gold"] is not None]
    majority = max(sorted(set(golds)), key=golds.count) if golds else None
    k_correct = sum(bool(r["correct"]) for r in labelled)
    prec = [
        sum(c in r["gold_docs"] for c in r["cited"]) / len(r["cited"])
        for r in with_gold
        if r["cited"]
    ]
    m: dict[str, Any] = {
        "n": n,
        "answered": len(answered),
        "abstained": n - len(answered),
        "coverage": round(len(answered) / n, 4),
        "abstain_rate": round(1 - len(answered) / n, 4),
        "labelled": len(labelled),
        "label_coverage": round(len(labelled) / n, 4),
        "accuracy_labelled": round(k_correct / len(labelled), 4) if labelled else None,
        "accuracy_labelled_ci95": list(wilson(k_correct, len(labelled))) if labelled else None,
        "majority_class": majority,
        "majority_accuracy": round(golds.count(majority) / len(golds), 4) if golds else None,
        "citation_precision": round(sum(prec) / len(prec), 4) if prec else None,
        "citation_recall": (
            round(sum(r["gold_cited"] for r in with_gold) / len(with_gold), 4)
            if with_gold
            else None
        ),
        "gold_cited_of_answered": (
            round(sum(r["gold_cited"] for r in answered) / len(answered), 4) if answered else None
        ),
        # Why answered items carry no label (no-skill, uncalibrated, below-threshold ...).
        "labels_withheld": _counts(
            str(r.get("label_withheld") or "no label")
            for r in answered
            if not r["labelled"] and r["gold"] is not None
        ),
        "answers_with_4gram_x3": sum(r["max_4gram_repeats"] >= 3 for r in records),
        "mean_latency_s": round(sum(float(r.get("latency_s") or 0) for r in records) / n, 3),
    }
    agent = [r["agent"] for r in records if r.get("agent")]
    if agent:
        m["agent"] = {
            "questions": len(agent),
            "tool_calls_per_question": round(sum(x["tool_calls"] for x in agent) / len(agent), 3),
            "rounds_per_question": round(sum(x["rounds"] for x in agent) / len(agent), 3),
            "fallback_rate": round(sum(bool(x["fallback"]) for x in agent) / len(agent), 4),
            "budget_stop_rate": round(sum(bool(x["stop"]) for x in agent) / len(agent), 4),
            "invalid_actions_per_question": round(sum(x["invalid"] for x in agent) / len(agent), 3),
            "mean_loop_s": round(sum(x["seconds"] for x in agent) / len(agent), 3),
            "fallback_reasons": _counts(str(x["fallback"]) for x in agent if x["fallback"]),
        }
    if labelled:
        conf = [float(r["confidence"]) for r in labelled]
        ok = [bool(r["correct"]) for r in labelled]
        rel = reliability(conf, ok)
        m["ece_labelled"] = round(float(rel["ece"]), 4)
        m["reliability_bins"] = rel["bins"]
    scored = [r for r in answered if r["probs"] and r["gold"] is not None]
    if scored:
        conf = [max(r["probs"].values()) for r in scored]
        ok = [max(r["probs"], key=r["probs"].get) == r["gold"] for r in scored]
        pts = risk_coverage(conf, ok)
        m["risk_coverage"] = {"points": pts, "aurc": round(aurc(pts), 4), "items": len(scored)}
        m["accuracy_argmax_answered"] = round(sum(ok) / len(ok), 4)
    return m


def _counts(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def labelled_accuracy(m: dict[str, Any]) -> str:
    """Accuracy on labelled items with its interval; "n/a (no item labelled)" when none was."""
    from medllm.eval.report import ci, fmt

    if m["accuracy_labelled"] is None:
        return "n/a (no item labelled)"
    return f"{fmt(m['accuracy_labelled'])} {ci(m['accuracy_labelled_ci95'])}"


def withheld_summary(m: dict[str, Any]) -> str:
    """``" (label withheld: no-skill 3)"`` — why answered items have no label (or "")."""
    w = m.get("labels_withheld") or {}
    return " (label withheld: " + ", ".join(f"{k} {n}" for k, n in w.items()) + ")" if w else ""


LEAVE_GOLD_OUT_NOTE = (
    "Leave-gold-out: each question's own abstract was hidden from retrieval, so every answer "
    "here is unsupported: abstaining is the right outcome (the abstention rate is the score)."
)


def is_leave_gold_out(m: dict[str, Any]) -> bool:
    return str((m.get("identity") or {}).get("variant", "")).endswith("leave-gold-out")


def write_report(run: RunDir, m: dict[str, Any], *, title: str) -> Path:
    from medllm.eval.report import fmt

    lines = [
        f"# {title}",
        "",
        "Asked through the engine (`medllm ask` path: retrieval, answerability gate, "
        "calibrated selective labels, generation).",
        *(["", LEAVE_GOLD_OUT_NOTE] if is_leave_gold_out(m) else []),
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| questions | {m['n']} |",
        f"| answered (coverage) | {m['answered']} ({fmt(m['coverage'])}) |",
        f"| abstained | {m['abstained']} ({fmt(m['abstain_rate'])}) |",
        f"| labelled | {m['labelled']} ({fmt(m['label_coverage'])} of all) |",
        *(
            f"| answered, label withheld: {why} | {k} |"
            for why, k in (m.get("labels_withheld") or {}).items()
        ),
        f"| accuracy on labelled | {labelled_accuracy(m)} |",
        f"| majority class ({m['majority_class']}) | {fmt(m['majority_accuracy'])} |",
        f"| ECE of labels given | {fmt(m.get('ece_labelled'))} |",
        f"| citation precision (answered) | {fmt(m['citation_precision'])} |",
        f"| citation recall: gold cited (answered with gold) | {fmt(m['citation_recall'])} |",
        f"| answers with a 4-gram x3+ | {m['answers_with_4gram_x3']} |",
        f"| scorer argmax accuracy on answered | {fmt(m.get('accuracy_argmax_answered'))} |",
        f"| mean latency (s) | {fmt(m['mean_latency_s'])} |",
    ]
    ag = m.get("agent")
    if ag:
        lines += [
            "",
            "Agent strategy (`agents.strategy = agent`):",
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| tool calls per question | {fmt(ag['tool_calls_per_question'])} |",
            f"| model calls (rounds) per question | {fmt(ag['rounds_per_question'])} |",
            f"| fallback to the router | {fmt(ag['fallback_rate'])} |",
            f"| stopped by a budget | {fmt(ag['budget_stop_rate'])} |",
            f"| invalid actions per question | {fmt(ag['invalid_actions_per_question'])} |",
            f"| mean loop time (s) | {fmt(ag['mean_loop_s'])} |",
        ]
        lines += [f"| fallback: {why} | {n} |" for why, n in ag["fallback_reasons"].items()]
    rc = m.get("risk_coverage")
    if rc:
        lines += ["", f"Risk–coverage of the scorer on answered items: AURC {fmt(rc['aurc'])}."]
        from medllm.eval.report import PLOTS_MISSING, plot_risk_coverage, try_plot

        png = run.path / "risk_coverage.png"
        ok = try_plot(plot_risk_coverage, png, rc["points"], rc["aurc"], title)
        lines.append("![risk-coverage](risk_coverage.png)" if ok else PLOTS_MISSING)
    p = run.path / "report.md"
    p.write_text("\n".join(lines) + "\n")
    return p
