"""``medllm models``: the known models and whether each is available here."""

from __future__ import annotations

from typing import Annotated

import typer

from medllm.cli.common import out, print_json, settings_from


def models(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List known models and the backends: what is available here, what each supports, and
    which backend the configured model runs on."""
    from rich.table import Table

    from medllm.models import model_table
    from medllm.models.backend import backend_table

    s = settings_from(ctx)
    rows = model_table(s)
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
            f"{r['kind']} ({r['tuning']})" if r.get("tuning") else r["kind"],
            r["family"],
            r["params"],
            r["source"],
            avail,
            "*" if r["default"] else "",
        )
    out.print(t)
    base = [r["name"] for r in rows if r.get("tuning") == "base"]
    if base:
        out.print(
            f"{', '.join(base)}: base model (not instruction-tuned) — its free text rambles or "
            "repeats; it is here for label scoring and fine-tuning (`medllm finetune`)"
        )
    out.print(
        "Any Hugging Face hub id or local directory also works, e.g. --model google/gemma-2b-it"
    )
    b = Table(title="backends (--backend; --api-base URL for a server)")
    for col in ("backend", "available", "logprobs", "hidden_states", "lora", "tool_calling"):
        b.add_column(col)
    yes = {True: "yes", False: "no"}
    for r in backend_table():
        avail = "yes" if r["available"] else "no — missing " + ", ".join(r["missing"])
        b.add_row(
            r["backend"],
            avail,
            *(yes[r[k]] for k in ("logprobs", "hidden_states", "lora", "tool_calling")),
        )
    out.print(b)
    from medllm.errors import MedllmError
    from medllm.models.backend import resolve_backend

    try:
        kind = resolve_backend(s)
        if kind == "openai-compatible":  # models.llm is not used: the server's model answers
            served = repr(s.api.model) if s.api.model else "the one it serves"
            out.print(
                f"answers come from the server at {s.api.base} (openai-compatible; model: "
                f"{served}); models.llm {s.models.llm!r} is not used"
            )
        else:
            out.print(f"models.llm {s.models.llm!r} runs on: {kind}")
    except MedllmError as e:
        out.print(f"models.llm {s.models.llm!r}: {e}")
