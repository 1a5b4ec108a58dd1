"""``medllm serve``: an OpenAI-compatible HTTP API (see medllm.server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

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
    refuse_unused_model,
    settings_from,
    strategy_section,
)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' (env MEDLLM_SERVE_API_KEY)."),
    ] = None,
    mode: Annotated[str, typer.Option(help="auto | rag | direct.")] = "auto",
    model: Annotated[str | None, typer.Option(help="Known name, hub id or directory.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter directory.")] = None,
    k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, help="Abstracts.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection (corpus) searched.")] = None,
    where: WhereOpt = None,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
    strategy: StrategyOpt = None,
) -> None:
    """Serve /v1/models and /v1/chat/completions for OpenAI clients and chat UIs."""
    key = api_key or os.environ.get("MEDLLM_SERVE_API_KEY") or None
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
        from medllm.assistant import Assistant
        from medllm.server import serve as run

        err.print("loading models...")
        assistant = Assistant.from_settings(s, mode=mode, k=k)
        b = assistant.engine.backend
        err.print(
            f"serving on http://{host}:{port}/v1 (model {b.model}, backend {b.name}, "
            f"strategy {assistant.strategy})"
        )
        run(assistant, host=host, port=port, api_key=key)
