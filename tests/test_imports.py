"""The package has no import circle, counting imports inside functions too, and its layers
import only downwards where the house map says so (the model knows nothing of kernels).

An edge is an import statement of a package module (``import a.b``, ``from a.b import c``
where ``a.b.c`` may itself be a module); the parent packages that Python initializes on the
way are not edges of their own (a package that re-exports its modules would otherwise
always close a circle with each of them).
"""

from __future__ import annotations

import ast
from pathlib import Path

from monarchpc.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "monarchpc"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its file)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def targets(name: str) -> set[str]:
        return {name} if name in modules else set()

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edges |= targets(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
                # `from package import submodule` imports the submodule; names, the package
                edges |= subs if len(subs) == len(node.names) else targets(node.module) | subs
        graph[name] = {e for e in edges if e.startswith("monarchpc") and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    # the graph is read at all, imports inside functions included
    assert len(graph) > 30 and "monarchpc.learning.engines" in graph["monarchpc.run.trainer"]
    assert "monarchpc.data" in graph["monarchpc.reports.measure"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_circle_finder_finds_circles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_layers_import_downwards() -> None:
    """circuits/ (the model) imports no kernel, E-step, run or use module; kernels/ imports
    nothing of the package but itself; nothing in the package imports the lab tooling."""
    graph = import_graph()

    def imports(prefix: str) -> set[str]:
        return {t for m, ts in graph.items() if m.startswith(prefix) for t in ts}

    circuits = imports("monarchpc.circuits")
    assert circuits and not {t for t in circuits if t.startswith(
        ("monarchpc.kernels", "monarchpc.learning", "monarchpc.run", "monarchpc.use",
         "monarchpc.structures"))}, circuits
    assert {t for t in imports("monarchpc.kernels") if not t.startswith("monarchpc.kernels")} \
        == set()
    assert not any("lab" in t for t in imports("monarchpc"))
