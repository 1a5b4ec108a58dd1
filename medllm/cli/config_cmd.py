"""``medllm config``: inspect resolved settings."""

from __future__ import annotations

from typing import Annotated

import typer

from medllm.cli.common import out, print_json, settings_from

app = typer.Typer(help="Inspect settings.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the resolved settings and where they came from."""
    s = settings_from(ctx)
    data = s.model_dump(mode="json")
    if as_json:
        print_json(data)
        return
    import tomli_w

    out.print("# sources (lowest priority first): " + " < ".join(s._sources))
    out.print(tomli_w.dumps(_drop_none(data)), end="")


def _drop_none(d: dict) -> dict:  # TOML has no null
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}
