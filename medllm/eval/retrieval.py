"""Retrieval quality against the gold PMID: hit@k and MRR per retrieval mode.

Each PubMedQA question is sent to :class:`medllm.retrieval.Retriever` (the same search the
agents use); the gold document is the question's own abstract. This is what LlamaIndex's
``RetrieverEvaluator`` computes with its ``hit_rate`` and ``mrr`` metrics, done directly on
the medllm Retriever so that the fused/hybrid document ranking is the one measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import DataError
from medllm.eval import report
from medllm.eval.base import (
    RunDir,
    RunResult,
    base_config,
    check_limit,
    default_run_path,
    run_items,
    sha256_file,
)
from medllm.eval.pubmedqa import data_files, load_split
from medllm.metrics import rank_of, retrieval_report

if TYPE_CHECKING:
    from medllm.config import Settings

KS = (1, 3, 5, 10)


def run_retrieval_eval(
    settings: Settings,
    *,
    modes: tuple[str, ...] = ("dense", "bm25", "hybrid"),
    split: str = "all",
    source: str | Path | None = None,
    max_k: int = 10,
    out: Path | None = None,
    limit: int | None = None,
    fresh: bool = False,
    show_progress: bool = True,
) -> RunResult:
    from medllm.retrieval import MODES, Retriever

    check_limit(limit)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise DataError(f"unknown retrieval mode(s) {bad}; use {', '.join(MODES)}")
    pqal, gt = data_files(settings, source)
    records, _ = load_split(pqal, gt, split)
    every_id = [r.pmid for r in records]
    records = records[:limit] if limit else records
    retriever = Retriever.from_settings(settings)  # StoreError when nothing was ingested
    if settings.retrieval.where:  # a bad filter, or one nothing passes, stops here
        why = retriever.empty_filter(settings.retrieval.where)
        if why:
            raise DataError(f"{why}: every hit@k would be 0 (--where)")
    identity = {
        "task": "retrieval",
        "dataset": pqal.name,
        "data_sha256": sha256_file(pqal),
        "split": split,
        "modes": list(modes),
        "max_k": max_k,
        "embedding": settings.models.embedding,
        "collection": settings.retrieval.collection,
        "store_counts": retriever.count(),
    }
    if settings.retrieval.where:  # a filtered run never resumes an unfiltered one
        identity["where"] = settings.retrieval.where
    path = out or default_run_path(
        settings,
        "retrieval",
        settings.retrieval.collection,
        settings.models.embedding,
        split,
        where=settings.retrieval.where,
    )
    config = base_config(settings, data={"path": str(pqal), "n_items": len(records)})
    run = RunDir.open(path, identity, config, fresh=fresh, default=out is None)
    by_id = {r.pmid: r for r in records}

    def step(ids: list[str]) -> list[dict[str, Any]]:
        recs = []
        for pmid in ids:
            rec: dict[str, Any] = {"id": pmid, "gold": pmid, "ranked": {}, "latency": {}}
            for m in modes:
                t0 = time.perf_counter()
                docs = retriever.search(by_id[pmid].question, k=max_k, mode=m)
                rec["latency"][m] = round(time.perf_counter() - t0, 4)
                rec["ranked"][m] = [d.doc_id for d in docs]
            recs.append(rec)
        return recs

    items = run_items(
        run,
        [r.pmid for r in records],
        step,
        batch_size=16,
        desc="retrieval",
        show_progress=show_progress,
        known=every_id,
    )
    curves = {}
    for m in modes:
        ranks = [rank_of(it["gold"], it["ranked"][m]) for it in items]
        rep = retrieval_report(ranks, ks=tuple(range(1, max_k + 1)))
        rep["mean_latency_s"] = sum(it["latency"][m] for it in items) / len(items)
        curves[m] = rep
    metrics = {"n": len(items), "modes": curves, "identity": identity}
    run.write_json("metrics.json", metrics)
    _write_report(run, metrics)
    return RunResult(run.path, metrics, items)


def _write_report(run: RunDir, m: dict[str, Any]) -> None:
    plot = report.try_plot(
        report.plot_hit_at_k, run.path / "hit_at_k.png", m["modes"], "retrieval: gold PMID in top k"
    )
    ident = run.identity
    ks = [k for k in KS if str(k) in next(iter(m["modes"].values()))["hit_at"]]
    lines = [
        "# Retrieval against the gold PMID",
        "",
        f"Collection `{ident['collection']}`, embedding `{ident['embedding']}`, "
        f"{m['n']} questions of `{ident['dataset']}` (split {ident['split']})."
        + (
            f" Filter `{ident['where']}`: a question whose gold abstract fails it cannot find it."
            if ident.get("where")
            else ""
        ),
        "",
        "| mode | " + " | ".join(f"hit@{k}" for k in ks) + " | MRR | ms/query |",
        "| --- " * (len(ks) + 3) + "|",
    ]
    for mode, rep in m["modes"].items():
        cells = [report.fmt(rep["hit_at"][str(k)]["hit"]) for k in ks]
        lines.append(
            f"| {mode} | "
            + " | ".join(cells)
            + f" | {report.fmt(rep['mrr'])} | {rep['mean_latency_s'] * 1000:.0f} |"
        )
    lines += ["", "![hit@k](hit_at_k.png)" if plot else report.PLOTS_MISSING]
    (run.path / "report.md").write_text("\n".join(lines) + "\n")
