"""``medllm generate``: plain local generation through the model registry."""

from __future__ import annotations

import time
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


def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as one user turn).")],
    model: Annotated[str | None, typer.Option(help="Known name, hub id or directory.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Tokens to generate.")] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="LoRA adapter directory (from `medllm finetune`).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
) -> None:
    """Generate text from a prompt with a local model (no retrieval)."""
    if not prompt.strip():
        raise typer.BadParameter("the prompt is empty", param_hint="PROMPT")
    s = settings_from(
        ctx,
        **merge(
            {"models": {"llm": model, "adapter": adapter}},
            {"generation": {"max_new_tokens": max_new_tokens}},
            backend_sections(backend, api_base, api_model),
        ),
    )
    refuse_unused_model(s, model)
    with handle_errors():
        from medllm.models.backend import load_backend

        b = load_backend(s)
        t0 = time.perf_counter()
        text = b.chat([{"role": "user", "content": prompt}]).strip()
        dt = time.perf_counter() - t0
    if as_json:
        print_json(
            {
                "model": b.model,
                "backend": b.name,
                "prompt": prompt,
                "text": text,
                "seconds": dt,
            }
        )
    else:
        out.print(text)
