"""``medllm chat``: a REPL with conversation memory and streamed answers.

Commands: /sources (citations of the last answer), /mode auto|rag|direct, /reset, /help,
/exit. On a terminal, line editing and history come from readline (history kept in
MEDLLM_HOME/chat_history).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medllm.cli.common import (
    ApiBaseOpt,
    ApiModelOpt,
    BackendOpt,
    backend_sections,
    err,
    handle_errors,
    merge,
    settings_from,
)

if TYPE_CHECKING:
    from medllm.assistant import Assistant

HELP = """commands:
  /sources             citations of the last answer
  /mode auto|rag|direct  how questions are answered (now: {mode})
  /reset               forget the conversation
  /help                this help
  /exit                leave (or Ctrl-D)"""


def _readline_history(path: Path) -> Callable[[], None]:
    """Enable line editing with a persistent history; returns a function that saves it."""
    try:
        import readline
    except ImportError:  # pragma: no cover - not on this platform
        return lambda: None
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    return lambda: readline.write_history_file(path)


def chat_loop(
    assistant: Assistant,
    read: Callable[[str], str] = input,
    write: Callable[[str], object] = lambda t: (sys.stdout.write(t), sys.stdout.flush()),
) -> None:
    """The REPL: read lines until /exit or end of input; answers stream through ``write``."""
    from medllm.agents.answer import format_citation
    from medllm.errors import MedllmError

    write("medllm chat — /help for commands, /exit to leave\n")
    while True:
        try:
            line = read(">>> ").strip()
        except EOFError:
            write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                return
            if cmd == "/help":
                write(HELP.format(mode=assistant.mode) + "\n")
            elif cmd == "/reset":
                assistant.reset()
                write("conversation cleared\n")
            elif cmd == "/mode":
                if not arg:
                    write(f"mode: {assistant.mode}\n")
                    continue
                try:
                    assistant.mode = arg.strip()
                    write(f"mode: {assistant.mode}\n")
                except MedllmError as e:
                    write(f"error: {e}\n")
            elif cmd == "/sources":
                last = assistant.last
                if last is None:
                    write("no answer yet\n")
                elif not last.citations:
                    write(f"no sources ({last.route_reason})\n")
                else:
                    write("\n".join(format_citation(c) for c in last.citations) + "\n")
            else:
                write(f"unknown command {cmd}; /help lists them\n")
            continue
        try:
            stream = assistant.stream_chat(line)
            for delta in stream:
                write(delta)
            write("\n")
            ans = stream.answer
            if ans is not None and ans.citations:
                pmids = ", ".join(f"[{c.number}] PMID {c.pmid}" for c in ans.citations)
                write(f"sources: {pmids}  (/sources for details)\n")
        except MedllmError as e:
            write(f"error: {e}\n")


def chat(
    ctx: typer.Context,
    mode: Annotated[str, typer.Option(help="auto | rag | direct.")] = "auto",
    model: Annotated[str | None, typer.Option(help="Known name, hub id or directory.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter directory.")] = None,
    k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, help="Abstracts.")] = None,
    backend: BackendOpt = None,
    api_base: ApiBaseOpt = None,
    api_model: ApiModelOpt = None,
) -> None:
    """Chat with memory: follow-up questions are condensed with the history."""
    s = settings_from(
        ctx,
        **merge(
            {"models": {"llm": model, "adapter": adapter}},
            backend_sections(backend, api_base, api_model),
        ),
    )
    with handle_errors():
        from medllm.assistant import Assistant

        err.print("loading models...")
        assistant = Assistant.from_settings(s, mode=mode, k=k)
    save = _readline_history(s.paths.home / "chat_history") if sys.stdin.isatty() else None
    try:
        chat_loop(assistant)
    finally:
        if save is not None:
            save()
