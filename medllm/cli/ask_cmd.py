"""``medllm ask``: one question, answered with citations (or an abstention)."""

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

Mode = typer.Option(help="auto (retrieve, answer from sources or abstain) | rag | direct.")


def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The question.")],
    mode: Annotated[str, Mode] = "auto",
    model: Annotated[str | None, typer.Option(help="Known name, hub id or directory.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter directory.")] = None,
    k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, help="Abstracts.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection (corpus) searched.")] = None,
    where: WhereOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The answer object as JSON.")] = False,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
    strategy: StrategyOpt = None,
    trace: Annotated[
        bool, typer.Option(help="Print the trace (searches, tool calls) to stderr as it runs.")
    ] = False,
) -> None:
    """Answer a question from the indexed literature, with numbered citations."""
    from medllm.agents.engine import MODES

    if mode not in MODES:
        raise typer.BadParameter(f"use one of {', '.join(MODES)}", param_hint="--mode")
    s = settings_from(
        ctx,
        **merge(
            {
                "models": {"llm": model, "adapter": adapter},
                "retrieval": {"collection": collection, "where": join_where(where)},
            },
            backend_sections(backend, api_base, api_model),
            strategy_section(strategy),
        ),
    )
    refuse_unused_model(s, model)
    with handle_errors():
        from medllm.agents.engine import validate_question

        validate_question(question)
        from medllm.assistant import Assistant

        on_step = None
        shown: set[Any] = set()
        if trace:
            from medllm.agents.loop import step_line

            def on_step(step: dict[str, Any]) -> None:
                shown.add(step.get("n"))
                err.print(step_line(step), markup=False)

        assistant = Assistant.from_settings(s, mode=mode, k=k)
        answer = assistant.ask(question, on_step=on_step)
        if trace:  # steps not passed on live (the router's search), before the answer
            for step in answer.steps or []:
                if step.get("n") not in shown:
                    err.print(step_line(step), markup=False)
        why = None
        if answer.abstained and where and assistant.engine.retriever is not None:
            why = assistant.engine.retriever.empty_filter(where)
    if as_json:
        print_json(answer.to_dict())
    else:
        out.print(answer.format())
    if why:
        err.print(f"note: {why}", markup=False)
