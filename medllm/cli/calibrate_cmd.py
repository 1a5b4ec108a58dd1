"""``medllm calibrate``: measure whether a model's yes/no/maybe labels have skill."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medllm.cli.common import (
    ApiBaseOpt,
    ApiModelOpt,
    BackendOpt,
    backend_sections,
    handle_errors,
    merge,
    out,
    print_json,
    refuse_unused_model,
    settings_from,
)


def calibrate(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="LLM: known name, hub id or directory.")] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="Adapter directory on top of --model.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="PubMedQA directory or ori_pqal.json (default: eval.pubmedqa_dir)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N training questions.")
    ] = None,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Calibrate the label scorer on PQA-L training questions (never the test split) asked
    through the engine, choose the label threshold by cross-validation, and save it under
    MEDLLM_HOME/calibration/. `ask` then labels only when the model showed skill."""
    s = settings_from(
        ctx,
        **merge(
            {"models": {"llm": model, "adapter": str(adapter) if adapter else None}},
            backend_sections(backend, api_base, api_model),
        ),
    )
    refuse_unused_model(s, model)
    with handle_errors():
        from medllm.eval.calibrate import calibrate_pubmedqa

        cal, path = calibrate_pubmedqa(s, source=source, limit=limit)
    if as_json:
        print_json({"path": str(path), "skill": cal.skill, "threshold": cal.threshold, **cal.cv})
        return
    verdict = "labels will be shown" if cal.skill else "NO label will be shown (no skill)"
    out.print(f"{cal.cv['summary']}\n{verdict}; saved {path}")
