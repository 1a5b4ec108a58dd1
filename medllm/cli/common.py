"""Shared CLI plumbing: settings from the global options, output helpers, error handling."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from medllm.errors import MedllmError

# Answers go to stdout, diagnostics to stderr. No markup on stdout: answers and TOML contain
# square brackets. Wide when not a terminal so tables are not squeezed in pipes and CI logs.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:
    out.width = 160

F = TypeVar("F", bound=Callable[..., Any])

# The model-backend flags of every command that talks to an LLM (ask, chat, serve, generate, eval).
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Where the model runs: transformers | llama-cpp | openai-compatible "
        "(default: models.backend, 'auto').",
    ),
]
ApiBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--api-base",
        help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, "
        "llama.cpp server); implies --backend openai-compatible. Key: env MEDLLM_API_KEY.",
    ),
]
ApiModelOpt = Annotated[
    str | None,
    typer.Option("--api-model", help="Model name on the server (default: the one it serves)."),
]

StrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        help="router (retrieve once, gate, answer; any model) | agent (the model calls the "
        "search tools in a loop; for tool-capable 7B+ models). Default: agents.strategy.",
    ),
]


# --where on the commands that search (ask, chat, eval); several are joined, all must hold.
WhereOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="Metadata filter, e.g. 'year>=2010,pubtype=Review,mesh=Aspirin' (repeatable: "
        "all must hold).",
    ),
]


def join_where(where: list[str] | None) -> str | None:
    """One ``retrieval.where`` from the ``--where`` flags: every clause of each must hold."""
    parts = [w.strip() for w in where or [] if w.strip()]
    return ",".join(parts) or None


def strategy_section(strategy: str | None) -> dict[str, dict[str, Any]]:
    """Settings overrides for ``--strategy`` (checked: router | agent)."""
    if strategy is not None and strategy not in ("router", "agent"):
        err.print(f"error: unknown strategy {strategy!r}; use router or agent")
        raise typer.Exit(2)
    return {"agents": {"strategy": strategy}}


def backend_sections(
    backend: str | None, api_base: str | None, api_model: str | None
) -> dict[str, dict[str, Any]]:
    """Settings overrides for the backend flags: ``--api-base`` alone means the server."""
    if api_base and backend is None:
        backend = "openai-compatible"
    return {"models": {"backend": backend}, "api": {"base": api_base, "model": api_model}}


def refuse_unused_model(settings: Any, model: Any) -> None:
    """``--model`` names a model run in-process; with the server backend (``--api-base``, or
    ``api.base`` in the settings with ``models.backend`` auto) the server's model answers, so
    the flag would be silently ignored. Stop with what to do instead."""
    from medllm.models.backend import uses_server

    if model is not None and uses_server(settings):
        err.print(
            f"[bold red]error:[/] --model {model} is not used with the server backend: the "
            f"model served at {settings.api.base} answers. Choose one of the server's models "
            "with --api-model NAME, or run --model in-process with --backend llama-cpp "
            "(a GGUF) or --backend transformers",
            markup=True,
            highlight=False,
        )
        raise typer.Exit(2)


def merge(*sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge settings-override dicts section by section."""
    out: dict[str, dict[str, Any]] = {}
    for sec in sections:
        for name, values in sec.items():
            out.setdefault(name, {}).update(values or {})
    return out


def settings_from(ctx: typer.Context, **sections: dict[str, Any] | None) -> Any:
    """The resolved Settings for this invocation, with command flags applied on top."""
    from pydantic import ValidationError

    from medllm.config import Settings
    from medllm.errors import ConfigError

    obj = ctx.find_root().obj or {}
    with handle_errors():
        stage = "load"
        try:
            base = Settings.load(preset=obj.get("preset"), config_file=obj.get("config"))
            stage = "flags"
            return base.with_overrides(**sections) if sections else base
        except ValidationError as e:
            raise ConfigError(explain_settings_error(e, stage, obj)) from None
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"invalid settings: {e}") from None


def explain_settings_error(e: Any, stage: str, obj: dict[str, Any]) -> str:
    """Pydantic's validation report as one line per setting, each naming where the value came
    from (a command-line option, a MEDLLM_* variable, or the TOML file that sets it), with a
    suggestion for an unknown name — instead of pydantic's own text and links."""
    import difflib
    import os

    from medllm.config import Settings, _config_file, _read_toml, resolve_preset

    files: list[Path] = []
    try:
        if obj.get("preset"):
            files.append(resolve_preset(obj["preset"]))
        cfg = obj.get("config") or _config_file()
        if cfg:
            files.append(Path(cfg))
    except (OSError, ValueError):
        pass

    def file_with(loc: list[str]) -> Path | None:
        for f in reversed(files):  # the later file wins
            try:
                node: Any = _read_toml(f)
            except (OSError, ValueError):
                continue
            for part in loc:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                return f
        return None

    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        name = ".".join(loc)
        env = "MEDLLM_" + "__".join(x.upper() for x in loc)
        f = file_with(loc)
        if stage == "flags":
            where = "a command-line option"
        elif env in os.environ:
            where = f"environment variable {env}"
        elif f is not None:
            where = str(f)
        else:
            where = "the settings"
        if err.get("type") == "extra_forbidden":
            section = Settings.model_fields.get(loc[0]) if len(loc) > 1 else None
            known = (
                list(getattr(section.annotation, "model_fields", {}))
                if section is not None
                else list(Settings.model_fields)
            )
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f"; did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else ""
            out.append(f"unknown setting {name} (in {where}){hint}")
        else:
            out.append(f"{name} = {err.get('input')!r}: {err.get('msg')} (from {where})")
    return "invalid settings: " + "; ".join(out)


@contextmanager
def handle_errors() -> Iterator[None]:
    """User errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        yield
    except MedllmError as e:
        err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default, ensure_ascii=False) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
