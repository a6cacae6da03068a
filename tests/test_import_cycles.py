"""No import cycles: between any two modules of the compiler or the runtime, and between the
runtime's packages (config is read by model and trainer, never the other way round).

Every import that runs counts, including those inside functions: a cycle hidden in a function is
still two modules that cannot be understood (or moved) one without the other. Imports under
``if TYPE_CHECKING:`` never run (the packages' typed ``__all__`` facades use them) and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("primus_runtime", "rewriter"):
        for path in (ROOT / package).rglob("*.py"):
            if "payload" in path.parts:  # files the build copies into megatron, not our modules
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, known: Iterable[str]) -> set[str]:
    known = set(known)
    names: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(inner) for block in ast.walk(tree) if _is_type_checking_block(block)
                 for inner in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names & known


def _is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, never executed (a package's typed facade)."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_module_imports_itself_through_others() -> None:
    assert _cycles(_graph()) == []


def test_runtime_packages_are_layered() -> None:
    packages: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        if not name.startswith("primus_runtime."):
            continue
        mine = ".".join(name.split(".")[:2])
        packages.setdefault(mine, set()).update(".".join(t.split(".")[:2]) for t in targets)
        packages[mine].discard(mine)
    assert _cycles(packages) == []


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
