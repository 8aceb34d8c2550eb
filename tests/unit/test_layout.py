"""The floor plan of the code: tasks grouped by role, no import cycle, no function too long.

Read from the source with ``ast`` (nothing is imported), so a cycle hidden in a function-level
import counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("deploys", "tasks")
ROLE_PACKAGES = {"base", "hypervisor", "ageis_node", "embedder", "services", "common"}
MAX_FUNCTION_LINES = 120


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name an import statement anywhere in ``tree`` names (relative ones resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # "from tasks.base import admin_user" imports the module tasks.base.admin_user
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = _imported(tree, module, path.name == "__init__.py")
        graph[module] = {t for t in targets if t in sources and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    tree = ast.parse("def f():\n    from tasks.common import ports\n")
    assert "tasks.common.ports" in set(_imported(tree, "tasks.x.y", False))


def test_no_import_cycle_among_deploys_and_tasks() -> None:
    graph = import_graph()
    assert graph.get("deploys.roles"), "the graph read no imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _functions() -> Iterator[tuple[str, str, int]]:
    for module, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield module, node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_over_the_line_budget(package: str) -> None:
    functions = [f for f in _functions() if f[0].split(".")[0] == package]
    assert functions, f"no functions found in {package}/"
    long = [f"{m}.{name}: {n} lines" for m, name, n in functions if n > MAX_FUNCTION_LINES]
    assert not long, f"over {MAX_FUNCTION_LINES} lines (split into stages): {long}"


def test_tasks_are_grouped_by_role() -> None:
    """tasks/ holds role packages and the shared helpers, no loose capability modules."""
    loose = sorted(
        p.name
        for p in (REPO / "tasks").iterdir()
        if p.name != "__init__.py" and not p.name.startswith((".", "__pycache__"))
        if not (p.is_dir() and p.name in ROLE_PACKAGES)
    )
    assert not loose, f"tasks/ should hold only {sorted(ROLE_PACKAGES)}; also found {loose}"
    for role in ROLE_PACKAGES:
        assert (REPO / "tasks" / role / "__init__.py").is_file(), f"tasks/{role} is no package"


def test_guarded_tasks_ask_changed_not_did_change() -> None:
    """The snapshot guard asks its triggers whether they will change before any has run; an
    ``_if`` calling ``did_change()`` there raises on a converged host."""
    guarded = [
        path
        for path in (REPO / "tasks").rglob("*.py")
        if "snapshot_guard import" in path.read_text()
    ]
    assert guarded, "no module enters the snapshot guard; this test checks nothing"
    offenders = [str(p.relative_to(REPO)) for p in guarded if ".did_change(" in p.read_text()]
    assert offenders == [], f"use tasks.common.changes.changed in {offenders}"
