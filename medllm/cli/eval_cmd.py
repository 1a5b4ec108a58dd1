"""``medllm eval``: PubMedQA / NLI / MCQ accuracy, retrieval hit@k, RAGAS, run comparison.

Each command is a thin layer over :mod:`medllm.eval`; every run leaves a directory (under
MEDLLM_HOME/runs or --out) with config.json, items.jsonl, metrics.json, report.md and plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medllm.cli.common import (
    ApiBaseOpt,
    ApiModelOpt,
    BackendOpt,
    StrategyOpt,
    WhereOpt,
    backend_sections,
    err,
    handle_errors,
    join_where,
    merge,
    out,
    print_json,
    refuse_unused_model,
    settings_from,
    strategy_section,
)

app = typer.Typer(help="Evaluate models and retrieval; write reproducible reports.")

Model = Annotated[str | None, typer.Option(help="LLM: known name, hub id or directory.")]
Adapter = Annotated[Path | None, typer.Option(help="LoRA adapter directory on top of --model.")]
EmbedModel = Annotated[str | None, typer.Option(help="Embedding model of the store to search.")]
Out = Annotated[
    Path | None, typer.Option("--out", help="Run directory (default: MEDLLM_HOME/runs/...).")
]
Limit = Annotated[int | None, typer.Option(help="Evaluate only the first N items.")]
Fresh = Annotated[bool, typer.Option(help="Start over instead of resuming the run directory.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
BatchSize = Annotated[int | None, typer.Option(help="Items scored per forward pass.")]
Source = Annotated[
    str | None,
    typer.Option(help="PubMedQA directory or ori_pqal.json (default: eval.pubmedqa_dir)."),
]
Split = Annotated[str, typer.Option(help="test (the 500 official PMIDs) or all (1,000 PQA-L).")]
Where = WhereOpt  # repeatable: every --where must hold (as for ask, chat and retrieve)


def _settings(ctx: typer.Context, model: Any = None, adapter: Any = None, **kw: Any) -> Any:
    models = {"llm": model, "adapter": str(adapter) if adapter else None}
    if kw.get("embed_model"):
        models["embedding"] = kw["embed_model"]
    s = settings_from(
        ctx,
        **merge(
            {
                "models": models,
                "eval": {"batch_size": kw.get("batch_size"), "judge_llm": kw.get("judge")},
                "retrieval": {
                    "collection": kw.get("collection"),
                    "where": join_where(kw.get("where")),
                },
            },
            backend_sections(kw.get("backend"), kw.get("api_base"), kw.get("api_model")),
        ),
    )
    if "judge" not in kw:  # ragas: --model and the server's judge may both be used
        refuse_unused_model(s, model)
    return s


def _print_run_json(res: Any) -> None:
    """A run's metrics (without its identity) and where it lives, as JSON on stdout."""
    m = res.metrics
    print_json({"run_dir": str(res.path), **{k: v for k, v in m.items() if k != "identity"}})


def _label_summary(res: Any, as_json: bool) -> None:
    from medllm.eval.report import ci, fmt

    m = res.metrics
    if as_json:
        _print_run_json(res)
        return
    out.print(
        f"accuracy {fmt(m['accuracy'])} {ci(m['accuracy_ci95'])}  "
        f"macro-F1 {fmt(m['macro_f1'])} {ci(m['macro_f1_ci95'])}  n={m['n']}"
    )
    for name, v in m.get("baselines", {}).items():
        out.print(f"  baseline {name}: {fmt(v)}")
    if "retrieval" in m:
        r = m["retrieval"]
        out.print(
            f"  gold PMID retrieved: hit@1 {fmt(r['hit_at']['1']['hit'])}, MRR {fmt(r['mrr'])}"
        )
    if m.get("predictions"):
        out.print(f"  predictions: {m['predictions']}")
    out.print(f"report: {res.path / 'report.md'}")


@app.command("pubmedqa")
def pubmedqa_cmd(
    ctx: typer.Context,
    mode: Annotated[
        str, typer.Option(help="no-context | gold-context | rag | leave-gold-out")
    ] = "gold-context",
    split: Split = "test",
    model: Model = None,
    adapter: Adapter = None,
    embed_model: EmbedModel = None,
    retrieval: Annotated[
        str | None, typer.Option(help="dense | bm25 | hybrid (rag, leave-gold-out)")
    ] = None,
    k: Annotated[
        int | None, typer.Option("-k", "--top-k", help="Documents retrieved (rag).")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection searched (rag).")] = None,
    generate: Annotated[
        bool, typer.Option(help="Generate the answer text too (rag modes; off: labels only).")
    ] = True,
    where: Where = None,
    source: Source = None,
    limit: Limit = None,
    out_dir: Out = None,
    fresh: Fresh = False,
    batch_size: BatchSize = None,
    as_json: Json = False,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
    strategy: StrategyOpt = None,
) -> None:
    """PubMedQA. no-context / gold-context: the label scorer alone (likelihood over
    yes/no/maybe). rag / leave-gold-out: the questions asked through the engine users get
    (gate, selective labels, citations); leave-gold-out hides each question's own abstract."""
    from medllm.eval.pubmedqa import ENGINE_MODES

    s = _settings(
        ctx,
        model,
        adapter,
        embed_model=embed_model,
        batch_size=batch_size,
        collection=collection,
        where=where,
        backend=backend,
        api_base=api_base,
        api_model=api_model,
    )
    if strategy is not None and mode not in ENGINE_MODES:
        err.print(f"error: --strategy applies to the engine modes ({', '.join(ENGINE_MODES)})")
        raise typer.Exit(2)
    if mode in ENGINE_MODES:
        s = s.with_overrides(
            retrieval={"mode": retrieval, "top_k": k}, **strategy_section(strategy)
        )
        with handle_errors():
            from medllm.eval.engine_eval import run_engine_eval
            from medllm.eval.pubmedqa import engine_items

            items, path = engine_items(s, split=split, source=source)
            res = run_engine_eval(
                items,
                s,
                name=f"pubmedqa-{split}",
                data_path=path,
                leave_gold_out=mode == "leave-gold-out",
                generate=generate,
                out=out_dir,
                limit=limit,
                fresh=fresh,
            )
        _engine_summary(res, as_json)
        return
    with handle_errors():
        from medllm.eval.label import run_label_task
        from medllm.eval.pubmedqa import pubmedqa_task

        task = pubmedqa_task(s, mode=mode, split=split, source=source)
        res = run_label_task(task, s, out=out_dir, limit=limit, fresh=fresh)
    _label_summary(res, as_json)


@app.command("yesno")
def yesno_cmd(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="JSONL (question, answer, optional gold ids) or MIRAGE .json.")
    ],
    leave_gold_out: Annotated[
        bool, typer.Option(help="Hide each question's gold documents from retrieval.")
    ] = False,
    model: Model = None,
    adapter: Adapter = None,
    retrieval: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid")] = None,
    k: Annotated[int | None, typer.Option("-k", "--top-k", help="Documents retrieved.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection searched.")] = None,
    where: Where = None,
    generate: Annotated[bool, typer.Option(help="Generate the answer text too.")] = True,
    limit: Limit = None,
    out_dir: Out = None,
    fresh: Fresh = False,
    as_json: Json = False,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
    strategy: StrategyOpt = None,
) -> None:
    """Yes/no questions asked through the engine over whatever is ingested: coverage,
    abstention, accuracy on labelled items, citation precision/recall."""
    s = _settings(
        ctx,
        model,
        adapter,
        collection=collection,
        where=where,
        backend=backend,
        api_base=api_base,
        api_model=api_model,
    ).with_overrides(retrieval={"mode": retrieval, "top_k": k}, **strategy_section(strategy))
    with handle_errors():
        from medllm.eval.engine_eval import run_engine_eval
        from medllm.eval.yesno import load_yesno

        items = load_yesno(data)
        res = run_engine_eval(
            items,
            s,
            name=f"yesno-{data.stem}",
            data_path=data,
            leave_gold_out=leave_gold_out,
            generate=generate,
            out=out_dir,
            limit=limit,
            fresh=fresh,
        )
    _engine_summary(res, as_json)


def _engine_summary(res: Any, as_json: bool) -> None:
    from medllm.eval.engine_eval import (
        LEAVE_GOLD_OUT_NOTE,
        is_leave_gold_out,
        labelled_accuracy,
        withheld_summary,
    )
    from medllm.eval.report import fmt

    m = res.metrics
    if as_json:
        _print_run_json(res)
        return
    out.print(
        f"answered {m['answered']}/{m['n']} (coverage {fmt(m['coverage'])}), "
        f"abstained {m['abstained']}; labelled {m['labelled']}{withheld_summary(m)}: accuracy "
        f"{labelled_accuracy(m)} (majority {fmt(m['majority_accuracy'])})"
    )
    out.print(
        f"  citations: precision {fmt(m['citation_precision'])}, gold cited "
        f"{fmt(m['citation_recall'])}; answers with a 4-gram x3+: {m['answers_with_4gram_x3']}"
    )
    ag = m.get("agent")
    if ag:
        out.print(
            f"  agent: {fmt(ag['tool_calls_per_question'])} tool calls and "
            f"{fmt(ag['rounds_per_question'])} model calls per question, fallback to the router "
            f"{fmt(ag['fallback_rate'])}, budget stops {fmt(ag['budget_stop_rate'])}, "
            f"mean latency {fmt(m['mean_latency_s'])} s"
        )
    if is_leave_gold_out(m):
        out.print(f"  {LEAVE_GOLD_OUT_NOTE}")
    out.print(f"report: {res.path / 'report.md'}")


@app.command("nli")
def nli_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="MedNLI JSONL (or premise/hypothesis/label).")],
    split: Annotated[str | None, typer.Option(help="Keep records whose 'split' is this.")] = None,
    model: Model = None,
    adapter: Adapter = None,
    limit: Limit = None,
    out_dir: Out = None,
    fresh: Fresh = False,
    batch_size: BatchSize = None,
    as_json: Json = False,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
) -> None:
    """Natural-language inference accuracy (label set taken from the data)."""
    s = _settings(
        ctx,
        model,
        adapter,
        batch_size=batch_size,
        backend=backend,
        api_base=api_base,
        api_model=api_model,
    )
    with handle_errors():
        from medllm.eval.label import run_label_task
        from medllm.eval.nli import nli_task

        res = run_label_task(nli_task(data, split=split), s, out=out_dir, limit=limit, fresh=fresh)
    _label_summary(res, as_json)


@app.command("mcq")
def mcq_cmd(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="MedMCQA-style JSONL (question, options A-D, answer).")
    ],
    model: Model = None,
    adapter: Adapter = None,
    limit: Limit = None,
    out_dir: Out = None,
    fresh: Fresh = False,
    batch_size: BatchSize = None,
    as_json: Json = False,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
) -> None:
    """Multiple-choice accuracy (likelihood over A-D)."""
    s = _settings(
        ctx,
        model,
        adapter,
        batch_size=batch_size,
        backend=backend,
        api_base=api_base,
        api_model=api_model,
    )
    with handle_errors():
        from medllm.eval.label import run_label_task
        from medllm.eval.mcq import mcq_task

        res = run_label_task(mcq_task(data), s, out=out_dir, limit=limit, fresh=fresh)
    _label_summary(res, as_json)


@app.command("retrieval")
def retrieval_cmd(
    ctx: typer.Context,
    modes: Annotated[
        str, typer.Option(help="Comma-separated: dense,bm25,hybrid.")
    ] = "dense,bm25,hybrid",
    embed_model: EmbedModel = None,
    collection: Annotated[str | None, typer.Option(help="Collection searched.")] = None,
    where: Where = None,
    split: Annotated[str, typer.Option(help="Questions: all (1,000) or test (500).")] = "all",
    source: Source = None,
    limit: Limit = None,
    out_dir: Out = None,
    fresh: Fresh = False,
    as_json: Json = False,
) -> None:
    """hit@k and MRR of the gold PMID per retrieval mode."""
    from medllm.eval.report import fmt

    s = _settings(ctx, embed_model=embed_model, collection=collection, where=where)
    with handle_errors():
        from medllm.eval.retrieval import run_retrieval_eval

        mode_t = tuple(m.strip() for m in modes.split(",") if m.strip())
        res = run_retrieval_eval(
            s, modes=mode_t, split=split, source=source, out=out_dir, limit=limit, fresh=fresh
        )
    if as_json:
        print_json({"run_dir": str(res.path), **res.metrics})
        return
    for mode, rep in res.metrics["modes"].items():
        hits = "  ".join(
            f"hit@{k} {fmt(rep['hit_at'][str(k)]['hit'])}"
            for k in (1, 5, 10)
            if str(k) in rep["hit_at"]
        )
        out.print(f"{mode:7s} {hits}  MRR {fmt(rep['mrr'])}")
    where = res.metrics["identity"].get("where")
    if where:
        out.print(f"filter {where}: a gold abstract that fails it cannot be found")
    out.print(f"report: {res.path / 'report.md'}")


@app.command("ragas")
def ragas_cmd(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="Questions to judge.")] = 5,
    model: Model = None,
    judge: Annotated[
        str | None, typer.Option(help="Judge LLM (default: eval.judge_llm or --model).")
    ] = None,
    embed_model: EmbedModel = None,
    retrieval: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid")] = None,
    k: Annotated[int | None, typer.Option("-k", "--top-k", help="Documents retrieved.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection searched.")] = None,
    where: Where = None,
    metrics: Annotated[
        str, typer.Option(help="Judged metrics, comma-separated ('' for judge-free only).")
    ] = "faithfulness,response_relevancy,context_precision,context_recall",
    split: Split = "test",
    source: Source = None,
    out_dir: Out = None,
    fresh: Fresh = False,
    as_json: Json = False,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
) -> None:
    """RAGAS metrics judged by a local LLM, plus judge-free retrieval metrics."""
    from medllm.eval.report import fmt

    s = _settings(
        ctx,
        model,
        judge=judge,
        embed_model=embed_model,
        collection=collection,
        where=where,
        backend=backend,
        api_base=api_base,
        api_model=api_model,
    )
    with handle_errors():
        from medllm.eval.ragas_eval import (
            exact_match_summary,
            failure_summary,
            judge_verdict,
            run_ragas_eval,
        )

        names = tuple(x.strip() for x in metrics.split(",") if x.strip())
        res = run_ragas_eval(
            s,
            limit=limit,
            split=split,
            source=source,
            k=k,
            retrieval=retrieval,
            judge_metrics=names,
            out=out_dir,
            fresh=fresh,
        )
    if as_json:
        print_json({"run_dir": str(res.path), **res.metrics})
        return
    for name, v in res.metrics["metrics"].items():
        out.print(
            f"{name:22s} {fmt(v['mean'])}  scored {v['scored']}/{v['of']}  {failure_summary(v)}"
        )
    verdict = judge_verdict(res.metrics)
    if verdict:
        out.print(verdict)
    out.print(exact_match_summary(res.metrics["exact_match"]))
    out.print(f"report: {res.path / 'report.md'}")


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to put side by side.")],
    as_json: Json = False,
) -> None:
    """One table of several runs; warns when a fine-tuned model scores below its base."""
    with handle_errors():
        from medllm.eval.compare import compare_runs

        c = compare_runs(runs)
    for w in c.warnings:
        err.print(f"[yellow]warning:[/] {w}", markup=True)
    if as_json:
        print_json({"rows": c.rows, "warnings": c.warnings})
    else:
        out.print(c.markdown())


@app.command("predictions")
def predictions_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="predictions.json ({pmid: label}).")],
    source: Source = None,
    as_json: Json = False,
) -> None:
    """Check and score a PubMedQA predictions file as the official evaluation script does."""
    s = settings_from(ctx)
    with handle_errors():
        from medllm.eval.pubmedqa import score_predictions

        r = score_predictions(file, s, source)
    if as_json:
        print_json(r)
    else:
        out.print(f"accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  n={r['n']}")
