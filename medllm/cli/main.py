"""Entry point: ``medllm [--preset P] [--config FILE] [-v] COMMAND ...``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from medllm import __version__
from medllm.cli import (
    ask_cmd,
    calibrate_cmd,
    chat_cmd,
    config_cmd,
    eval_cmd,
    finetune_cmd,
    generate_cmd,
    ingest_cmd,
    models_cmd,
    retrieve_cmd,
    serve_cmd,
    store_cmd,
)

app = typer.Typer(
    name="medllm",
    help="Local, private medical question answering with open LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medllm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    preset: Annotated[
        str | None, typer.Option(help="Settings preset: a name (fast, gemma) or a TOML path.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A medllm.toml to use instead of the discovered one.")
    ] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logs.")] = 0,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    ctx.obj = {"preset": preset, "config": config}
    _configure_logging(verbose)


def _configure_logging(verbose: int) -> None:
    import os

    from rich.logging import RichHandler

    if verbose == 0:
        # Read by transformers when (and if) it is imported later.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False, console=_stderr())],
        force=True,
    )
    if verbose < 2:
        for noisy in (
            "httpx",
            "chromadb",
            "transformers",
            "sentence_transformers",
            "urllib3",
            "bm25s",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # bitsandbytes warns on every CPU 4-bit load that an optional kernels package is
        # missing; its fallback works, so the warning only alarms users.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _stderr():  # type: ignore[no-untyped-def]
    from medllm.cli.common import err

    return err


app.add_typer(config_cmd.app, name="config")
app.command("models")(models_cmd.models)
app.command("generate")(generate_cmd.generate)
app.add_typer(finetune_cmd.app, name="finetune")
app.command("ask")(ask_cmd.ask)
app.command("chat")(chat_cmd.chat)
app.command("serve")(serve_cmd.serve)
app.add_typer(ingest_cmd.app, name="ingest")
app.command("retrieve")(retrieve_cmd.retrieve)
app.add_typer(store_cmd.app, name="store")
app.add_typer(eval_cmd.app, name="eval")
app.command("calibrate")(calibrate_cmd.calibrate)


def _one_line_summaries(t: typer.Typer) -> None:
    """The command lists of ``--help`` print a command's first docstring paragraph with its
    line breaks; give each command that paragraph on one line as its summary."""
    import inspect

    for info in t.registered_commands:
        doc = inspect.getdoc(info.callback) if info.callback else None
        if info.short_help is None and doc:
            info.short_help = " ".join(doc.split("\n\n")[0].split())
    for group in t.registered_groups:
        if group.typer_instance is not None:
            _one_line_summaries(group.typer_instance)


_one_line_summaries(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
