"""Label tasks (PubMedQA, NLI, MCQ) on one runner: the model's backend scores the allowed options
(``Backend.score_batch``, :mod:`medllm.models.backend` — the scorer the agents use), never
free-text parsing.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import MedllmError
from medllm.eval import report
from medllm.eval.base import (
    Messages,
    RunDir,
    RunResult,
    base_config,
    check_adapter,
    check_limit,
    default_run_path,
    model_hash,
    run_items,
    scorer_description,
    sha256_file,
)
from medllm.metrics import classification_report

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)


@dataclass
class LabelItem:
    id: str
    gold: str
    messages: Messages | None = None  # None: built by the task's ``prepare`` (e.g. after RAG)
    extra: dict[str, Any] = field(default_factory=dict)  # written to items.jsonl


@dataclass
class LabelTask:
    name: str  # pubmedqa | nli | mcq
    variant: str  # mode (no-context, gold-context, rag-hybrid ...) or "" for one-mode tasks
    data_path: Path
    options: tuple[str, ...]
    items: list[LabelItem]
    identity: dict[str, Any] = field(default_factory=dict)  # task-specific identity keys
    baselines: dict[str, float] = field(default_factory=dict)
    prepare: Callable[[list[LabelItem]], None] | None = None
    finalize: Callable[[RunDir, list[dict[str, Any]], dict[str, Any]], None] | None = None


def run_label_task(
    task: LabelTask,
    settings: Settings,
    *,
    out: Path | None = None,
    limit: int | None = None,
    fresh: bool = False,
    show_progress: bool = True,
) -> RunResult:
    """Score every item of ``task`` (resuming a previous run in the same directory).

    The model is loaded before the run directory is opened: a model or server that cannot be
    used leaves nothing behind."""
    from medllm.models.backend import load_backend, model_identity

    check_limit(limit)
    items = task.items[:limit] if limit else task.items
    if not items:
        raise ValueError(f"{task.name}: no items to evaluate")
    model_name = settings.models.llm
    adapter = settings.models.adapter
    adapter_info = check_adapter(Path(adapter), model_name, settings) if adapter else None
    ident = model_identity(settings)
    loaded = _load(settings, load_backend)
    backend = loaded["backend"]
    if backend.name == "openai-compatible":
        model_name = backend.model  # the name the server serves
    identity = {
        "task": task.name,
        "variant": task.variant,
        "dataset": task.data_path.name,
        "data_sha256": sha256_file(task.data_path),
        "options": list(task.options),
        "model": model_name,
        "model_sha256": model_hash(ident["path"]) if ident["source"] != "server" else None,
        "backend": ident["backend"],
        "adapter_sha256": adapter_info["sha256"] if adapter_info else None,
        **task.identity,
    }
    path = out or default_run_path(
        settings,
        task.name,
        task.variant,
        model_name,
        Path(adapter).name if adapter else "",
        "" if ident["backend"] == "transformers" else ident["backend"],
    )
    config = base_config(
        settings,
        data={"path": str(task.data_path), "n_items": len(items), "limit": limit},
        model={"name": model_name, "path": ident["path"], "source": ident["source"]},
        adapter=adapter_info,
        backend=backend.describe(),
        scorer=scorer_description(adapter_info),
    )
    run = RunDir.open(path, identity, config, fresh=fresh, default=out is None)
    by_id = {it.id: it for it in items}

    def step(ids: list[str]) -> list[dict[str, Any]]:
        batch = [by_id[i] for i in ids]
        if task.prepare is not None:
            task.prepare(batch)
        probs = backend.score_batch(
            [it.messages or [] for it in batch], task.options, batch_size=len(batch)
        )
        recs = []
        for it, p in zip(batch, probs, strict=True):
            pred = max(task.options, key=lambda o: p[o])
            rec = {
                "id": it.id,
                "gold": it.gold,
                "pred": pred,
                "correct": pred == it.gold,
                "confidence": round(p[pred], 6),
                "probs": {k: round(v, 6) for k, v in p.items()},
                **it.extra,
            }
            if p.warnings:  # e.g. an option outside a server's top log-probabilities
                rec["scoring_warnings"] = p.warnings
            recs.append(rec)
        return recs

    t0, c0 = time.perf_counter(), time.process_time()
    before = run.done()
    n_before = sum(it.id in before for it in items)
    try:
        records = run_items(
            run,
            [it.id for it in items],
            step,
            batch_size=settings.eval.batch_size,
            desc=f"{task.name} {task.variant}".strip(),
            show_progress=show_progress,
            sort_key=_length_key(by_id),
            known=[it.id for it in task.items],
        )
    except MedllmError:
        if run.created and not run.done():  # failed before the first item: leave no run behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    metrics = classification_report(
        [r["gold"] for r in records],
        [r["pred"] for r in records],
        task.options,
        [r["confidence"] for r in records],
        seed=settings.generation.seed,
    )
    metrics["baselines"] = {
        f"majority ({_majority(records)})": _majority_acc(records),
        **task.baselines,
    }
    new = len(records) - n_before
    metrics["timing"] = {
        "seconds_this_call": round(elapsed, 2),
        "cpu_seconds_this_call": round(cpu, 2),  # all threads: wall time on an idle machine
        # is about this divided by the threads used
        "torch_threads": loaded.get("threads"),
        "items_this_call": new,
        "items_per_s": round(new / elapsed, 3) if new and elapsed else None,
        "mean_item_latency_s": _mean([r.get("latency_s") for r in records]),
    }
    metrics["unparseable"] = 0  # likelihood scoring always yields a label
    metrics["scoring"] = {
        "backend": backend.name,
        "method": backend.scoring,
        "items_with_floor": sum(bool(r.get("scoring_warnings")) for r in records),
    }
    if "retrieved" in records[0]:
        from medllm.metrics import rank_of, retrieval_report

        k = max(len(r["retrieved"]) for r in records)
        ranks = [rank_of(r["id"], r["retrieved"]) for r in records]
        metrics["retrieval"] = retrieval_report(ranks, ks=tuple(range(1, k + 1)))
    metrics["identity"] = identity
    if task.finalize is not None:
        task.finalize(run, records, metrics)
    run.write_json("metrics.json", metrics)
    report.write_label_report(run, metrics, title=f"{task.name} {task.variant}".strip())
    return RunResult(run.path, metrics, records)


def _load(settings: Settings, load_backend: Callable[[Settings], Any]) -> dict[str, Any]:
    backend = load_backend(settings)
    threads = None
    if backend.name == "transformers":
        import torch

        torch.manual_seed(settings.generation.seed)
        threads = torch.get_num_threads()
    return {"backend": backend, "threads": threads}


def _length_key(by_id: dict[str, LabelItem]) -> Any:
    """Batch items of similar prompt length together (less padding) when prompts are known."""
    if any(it.messages is None for it in by_id.values()):
        return None
    return lambda i: sum(len(m["content"]) for m in by_id[i].messages or [])


def _majority(records: list[dict[str, Any]]) -> str:
    golds = [r["gold"] for r in records]
    return max(sorted(set(golds)), key=golds.count)


def _majority_acc(records: list[dict[str, Any]]) -> float:
    m = _majority(records)
    return sum(r["gold"] == m for r in records) / len(records)


def _mean(xs: list[Any]) -> float | None:
    vals = [x for x in xs if isinstance(x, int | float)]
    return round(sum(vals) / len(vals), 4) if vals else None
