"""No import cycles among the project's modules, function-local imports included.

A cycle hidden by importing inside a function still couples the two modules both ways (and
breaks as soon as someone hoists the import), so the graph counts every `models.` import in
models/**/*.py and scripts/*.py wherever it sits, except under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = "models"


def module_name(path: Path) -> str:
    """models/common/mesh.py -> models.common.mesh; a package's __init__.py is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    files = [*sorted((ROOT / PACKAGE).rglob("*.py")), *sorted((ROOT / "scripts").glob("*.py"))]
    return {module_name(f): f for f in files}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The project modules a file imports: `from models.a import b` is models.a.b when that is a
    module, else models.a (where the name is defined)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found & known


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: imported_modules(path.read_text(), set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_count():
    known = {"models.x", "models.y", "models.y.z"}
    source = "def f():\n    from models.y import z, helper\n    import models.x\n"
    assert imported_modules(source, known) == {"models.y.z", "models.y", "models.x"}
    assert imported_modules("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import models.x\n",
                            known) == set()


def test_no_import_cycle_among_project_modules():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the project
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_under_models_imports():
    """A cycle at import time, or a broken import, fails here, naming each module that failed."""
    modules = [n for n in project_files() if n.startswith(PACKAGE + ".") and ".tests" not in n]
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # every failure, not just the first
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert not failed, failed
