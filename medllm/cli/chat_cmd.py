"""``medllm chat``: a REPL with conversation memory and streamed answers.

Commands: /sources (citations of the last answer), /trace (the last answer's searches and
tool calls), /mode auto|rag|direct, /strategy router|agent, /reset, /help, /exit. With the agent
strategy each tool call is shown as it happens. On a terminal, line editing and history come
from readline (history kept in MEDLLM_HOME/chat_history).
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

if TYPE_CHECKING:
    from medllm.agents.answer import Answer
    from medllm.assistant import Assistant

HELP = """commands:
  /sources             citations of the last answer
  /trace               the last answer's searches and tool calls (ids, ms), fallback, budgets
  /mode auto|rag|direct  how questions are answered (now: {mode})
  /strategy router|agent  how evidence is gathered (now: {strategy})
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
    from medllm.agents.answer import SAME_SOURCES, format_citation
    from medllm.agents.loop import step_line
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
                write(HELP.format(mode=assistant.mode, strategy=assistant.strategy) + "\n")
            elif cmd == "/reset":
                assistant.reset()
                write("conversation cleared\n")
            elif cmd in ("/mode", "/strategy"):
                name = cmd[1:]  # an Assistant property, validated by its setter
                try:
                    if arg:
                        setattr(assistant, name, arg.strip())
                    write(f"{name}: {getattr(assistant, name)}\n")
                except MedllmError as e:
                    write(f"error: {e}\n")
            elif cmd == "/trace":
                last = assistant.last
                if last is None:
                    write("no answer yet\n")
                else:
                    write(trace_text(last) + "\n")
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
            stream = assistant.stream_chat(line, on_step=lambda st: write(step_line(st) + "\n"))
            for delta in stream:
                write(delta)
            write("\n")
            ans = stream.answer
            if ans is not None and ans.citations:
                pmids = ", ".join(f"[{c.number}] PMID {c.pmid}" for c in ans.citations)
                write(f"sources: {pmids}  (/sources for details)\n")
            if ans is not None:
                for w in ans.warnings:
                    if w.startswith(SAME_SOURCES):
                        write(f"note: {w}\n")
        except MedllmError as e:
            write(f"error: {e}\n")


def trace_text(ans: Answer) -> str:
    """The trace of one answer, a line per step, for /trace."""
    from medllm.agents.loop import step_line

    head = f"strategy: {ans.strategy}"
    if ans.agent:
        ag = ans.agent
        head += (
            f" ({ag['kind']} agent: {ag['rounds']} model calls, {ag['tool_calls']} tool calls, "
            f"{ag['invalid']} invalid, {ag['seconds']:.1f} s"
            + (f"; stopped: {ag['stop']}" if ag["stop"] else "")
            + (f"; fell back: {ag['fallback']}" if ag["fallback"] else "")
            + ")"
        )
    lines = [head]
    for st in ans.steps:
        if st.get("type") == "retrieve":
            ids = st.get("ids") or []
            lines.append(
                f"  → router search {st.get('tool')}(query={st['args']['query']!r}) → "
                f"{len(ids)} abstract(s) ({', '.join(ids[:5])}) [{st.get('ms', 0):.0f} ms]"
            )
        else:
            lines.append(step_line(st))
    lines.append(f"  = {ans.route_reason}")
    return "\n".join(lines)


def chat(
    ctx: typer.Context,
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
    """Chat with memory: a follow-up ("And in older patients?") is searched together with the
    latest question that stood alone; a question that stands alone is answered without the
    conversation. /help lists the commands."""
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

        err.print("loading models...")
        assistant = Assistant.from_settings(s, mode=mode, k=k)
    save = _readline_history(s.paths.home / "chat_history") if sys.stdin.isatty() else None
    try:
        chat_loop(assistant)
    finally:
        if save is not None:
            save()
