"""No import cycles inside medllm: neither between modules nor between its top-level parts
(``medllm.models``, ``medllm.scoring``, ``medllm.eval``, ``medllm.finetune``...).

The graph is read from the source with ``ast``: every import, including those inside functions
(a lazy import still ties two modules together), but not those under ``if TYPE_CHECKING:``.
An import of a module's own enclosing package is not an edge (Python runs a package's
``__init__`` before any of its modules anyway)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imported(node: ast.AST, name: str, is_pkg: bool) -> set[str]:
    """Dotted names imported under ``node`` (``from a import b`` gives ``a`` and ``a.b``)."""
    out: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if _type_checking(child):
            continue
        if isinstance(child, ast.Import):
            out.update(a.name for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (child.level - 1)]
                mod = ".".join(base + ([child.module] if child.module else []))
            else:
                mod = child.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in child.names)
        out |= _imported(child, name, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: medllm modules it imports}."""
    files = {_module_name(p): p for p in (ROOT / "medllm").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for n in _imported(tree, name, path.name == "__init__.py"):
            while n and n not in files:
                n = n.rpartition(".")[0]
            if n and n != name and not name.startswith(n + "."):  # not its own package
                deps.add(n)
        graph[name] = deps
    return graph


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between top-level parts (``medllm.X``); the root package is left out (its
    ``__init__`` only re-exports lazily)."""

    def part(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        for d in deps:
            a, b = part(m), part(d)
            if a != b and "medllm" not in (a, b):
                out.setdefault(a, set()).add(b)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles_between_modules() -> None:
    graph = import_graph()
    assert "medllm.models.backend" in graph and "medllm.scoring.likelihood" in graph
    assert cycles(graph) == []


def test_no_import_cycles_between_parts() -> None:
    parts = part_graph(import_graph())
    assert {"medllm.models", "medllm.scoring", "medllm.eval", "medllm.finetune"} <= set(parts)
    assert cycles(parts) == []


def test_the_checker_finds_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
