"""``medllm models``: the known models and whether each is available here."""

from __future__ import annotations

from typing import Annotated

import typer

from medllm.cli.common import out, print_json, settings_from


def models(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List known models: family, size, source, and whether each is available locally."""
    from rich.table import Table

    from medllm.models import model_table

    rows = model_table(settings_from(ctx))
    if as_json:
        print_json(rows)
        return
    t = Table(title="medllm models")
    for col in ("name", "kind", "family", "params", "source", "available", "default"):
        t.add_column(col)
    for r in rows:
        avail = "yes" if r["available"] else f"no — {r['install']}"
        if r["kind"] == "llm" and r["available"]:
            avail += " (converted)" if r["converted"] else " (converts on first load)"
        t.add_row(
            r["name"],
            r["kind"],
            r["family"],
            r["params"],
            r["source"],
            avail,
            "*" if r["default"] else "",
        )
    out.print(t)
    out.print(
        "Any Hugging Face hub id or local directory also works, e.g. --model google/gemma-2b-it"
    )
