"""The package's modules import each other without cycles.

Every import counts, including those inside functions (a function-level import hides a
cycle from the interpreter, not from a reader); imports under `if TYPE_CHECKING:` are
annotations only and do not count. Importing `a.b.c` also imports the packages `a.b`
above it (their `__init__` runs first), except the importing module's own packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flora_export"


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _targets(name: str, node, mods: dict[str, Path]) -> list[str]:
    """The package modules an import statement in module `name` reads."""
    is_pkg = mods[name].name == "__init__.py"
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    else:
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        if node.level:
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        found = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix
                 for a in node.names]
    out = []
    for dep in found:
        while dep not in mods and "." in dep:
            dep = dep.rsplit(".", 1)[0]
        parts = dep.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too
        for dep in {".".join(parts[:i]) for i in range(2, len(parts) + 1)}:
            own_package = mods.get(dep, Path()).name == "__init__.py" and name.startswith(dep + ".")
            if dep in mods and dep != name and not own_package:
                out.append(dep)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        graph[name] = {dep for node in ast.walk(tree)
                       if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip
                       for dep in _targets(name, node, mods)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 80 and sum(map(len, graph.values())) > 200   # the graph was read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_function_level_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
