"""After applying: does the patched code still make sense on *this* release?

An edit whose anchor matched can still produce broken code: inserted code that reads a local
the release does not define there (an ``UnboundLocalError`` at run time), or imports a name the
release does not have. The engine cannot see that; this pass can, without running anything:

* every patched file must compile;
* pyflakes' undefined-name findings (undefined name, local referenced before assignment,
  undefined ``__all__`` entry) of each patched file are compared with those of the text before
  the patch: only what a patch *adds* is reported, so upstream's own oddities never are;
* every ``megatron.core`` import a patch adds must resolve in the patched tree of this release:
  the module exists (upstream, or created by the series) and defines the name, or the name is a
  submodule. Imports under ``try: ... except ImportError`` are optional by design and skipped;
  a module with ``__getattr__`` or a star import cannot be judged and is skipped too.

A finding is a :class:`Problem` naming the patch, file, line and name; ``build`` and ``check``
fail on any, ``matrix`` reports the patch as ``broken``. Results are cached by file texts.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from rewriter.cache import JsonCache, cache_key
from rewriter.engine import SeriesResult

#: pyflakes messages that mean "this name is not defined where it is used"
UNDEFINED = ("UndefinedName", "UndefinedLocal", "UndefinedExport")
OPTIONAL_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
PACKAGE = "megatron"


@dataclass(frozen=True)
class Problem:
    """One reason a patch is ``broken`` on a release."""

    patch: str
    file: str
    line: int
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} (patch {self.patch})"


def broken_message(problems: list[Problem], upstream_label: str) -> str:
    """One line for ``build`` and ``check``: every problem, and what to do."""
    return (
        f"{len(problems)} problem(s) in the patched code on upstream {upstream_label} (the edits applied, the result "
        f"is broken): " + "; ".join(map(str, problems))
        + ". Limit the edit to the releases it fits (`releases:`) or give a variant for this one "
        "(docs/patchset-format.md)."
    )


@dataclass(frozen=True)
class _Finding:
    kind: str  # "syntax", a pyflakes message class, or "import"
    name: str
    line: int
    message: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


def check_series(result: SeriesResult, read_upstream: Callable[[str], str | None], upstream_digest: str,
                 cache: JsonCache | None = None) -> list[Problem]:
    """Every problem a patch of ``result`` introduces (see the module docstring), in file order.

    Cached as a whole, keyed by the upstream tree's digest and every touched file's history.
    """
    cache = cache or JsonCache(None)
    parts = [upstream_digest]
    for path, outcome in sorted(result.files.items()):
        parts += [path, outcome.upstream or "\0absent", *(f"{pid}\0{text}" for pid, text in outcome.steps)]
    parts += [f"{e.file}\0{e.code}" for p in result.series for e in p.edits if e.op == "import_module"]
    key = cache_key("semantic", *parts)
    hit = cache.get(key)
    if hit is not None:
        return [Problem(**p) for p in hit]
    problems = _check(result, read_upstream)
    cache.put(key, [asdict(p) for p in problems])
    return problems


def _check(result: SeriesResult, read_upstream: Callable[[str], str | None]) -> list[Problem]:
    final = {path: outcome.steps[-1][1] for path, outcome in result.files.items() if outcome.steps}

    def read_final(rel: str) -> str | None:
        return final[rel] if rel in final else read_upstream(rel)

    baselines = _import_baselines(result)
    problems: list[Problem] = []
    for path, outcome in sorted(result.files.items()):
        before = outcome.upstream if outcome.upstream is not None else baselines.get(path)
        for patch_id, after in outcome.steps:
            if after == before:
                continue
            problems += [Problem(patch_id, path, f.line, f.name, f.message)
                         for f in _new_findings(path, before, after, read_final)]
            before = after
    return problems


def _import_baselines(result: SeriesResult) -> dict[str, str]:
    """For files an ``import_module`` edit creates: the source text as the other release has it,
    so its own pyflakes findings there are not blamed on the patch (its imports still must resolve)."""
    out = {}
    for patch in result.series:
        for edit in patch.edits:
            if edit.op == "import_module" and edit.code is not None:
                out[edit.file] = edit.code
    return out


def _new_findings(path: str, before: str | None, after: str, read: Callable[[str], str | None]) -> list[_Finding]:
    old = Counter(f.key for f in _names(path, before)) if before is not None else Counter()
    found = []
    for f in _names(path, after):
        if old[f.key] > 0:
            old[f.key] -= 1
        else:
            found.append(f)
    if not any(f.kind == "syntax" for f in found):
        old_imports = Counter(_imports(path, before)) if before is not None else Counter()
        for module, name, line in _imports_with_lines(path, after):
            if old_imports[(module, name)] > 0:
                old_imports[(module, name)] -= 1
                continue
            why = _unresolved(module, name, read)
            if why:
                found.append(_Finding("import", f"{module}.{name}" if name else module, line, why))
    return found


@lru_cache(maxsize=256)
def _names(path: str, text: str) -> list[_Finding]:
    """Syntax error, or pyflakes' undefined-name findings."""
    try:
        tree = ast.parse(text, path)
    except SyntaxError as exc:
        return [_Finding("syntax", "", exc.lineno or 0, f"does not compile: {exc.msg}")]
    from pyflakes.checker import Checker

    out = []
    for message in Checker(tree, filename=path).messages:
        kind = type(message).__name__
        if kind in UNDEFINED:
            name = str(message.message_args[0])
            text = message.message % message.message_args
            out.append(_Finding(kind, name, message.lineno, text))
    return out


# -- imports ------------------------------------------------------------------------------------


def _imports(path: str, text: str) -> list[tuple[str, str]]:
    return [(m, n) for m, n, _ in _imports_with_lines(path, text)]


def _imports_with_lines(path: str, text: str) -> list[tuple[str, str, int]]:
    """(module, name or "", line) for each non-optional import of a ``megatron`` module."""
    try:
        tree = ast.parse(text, path)
    except SyntaxError:
        return []
    optional = _optional_lines(tree)
    package = path.removesuffix(".py").replace("/", ".").rsplit(".", 1)[0]
    if path.endswith("/__init__.py"):
        package = path.removesuffix("/__init__.py").replace("/", ".")
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in optional:
            continue
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node.module or "", node.level, package)
            if module.split(".")[0] == PACKAGE:
                out += [(module, a.name, node.lineno) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
    return out


def _absolute(module: str, level: int, package: str) -> str:
    if level == 0:
        return module
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, module] if module else base)


def _optional_lines(tree: ast.Module) -> set[int]:
    """Lines of imports inside a ``try`` whose handlers catch an import failure."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import(h) for h in node.handlers):
            for stmt in node.body:
                lines.update(n.lineno for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return lines


def _catches_import(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in OPTIONAL_IMPORT_ERRORS for t in types)


def _module_text(module: str, read: Callable[[str], str | None]) -> tuple[str, str | None, bool]:
    """(path, text, is a package) of a dotted module in the patched tree; text None: absent."""
    rel = module.replace(".", "/")
    init = read(f"{rel}/__init__.py")
    if init is not None:
        return f"{rel}/__init__.py", init, True
    return f"{rel}.py", read(f"{rel}.py"), False


def _unresolved(module: str, name: str, read: Callable[[str], str | None]) -> str:
    """Why ``from module import name`` (or ``import module``) fails on this tree; "" if it resolves.

    ``megatron`` itself has no ``__init__.py`` (a namespace package): only its submodules resolve.
    """
    path, text, is_package = _module_text(module, read)
    if text is None and module != PACKAGE:
        return f"module {module} does not exist in this release"
    if not name:
        return ""
    if (is_package or text is None) and _module_text(f"{module}.{name}", read)[1] is not None:
        return ""
    if text is None:
        return f"cannot import name {name!r} from {module} (no such module in this release)"
    defined = _defined(text, path)
    if defined is None or name in defined:
        return ""
    return f"cannot import name {name!r} from {module} ({path} does not define it in this release)"


def _defined(text: str, path: str) -> set[str] | None:
    """Names bound at a module's top level (also inside if/try/with); ``None``: cannot tell."""
    try:
        tree = ast.parse(text, path)
    except SyntaxError:
        return None
    names: set[str] = set()
    for node in _top_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if node.name == "__getattr__":
                return None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _top_level(body: Iterable[ast.stmt]) -> Iterable[Any]:
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)
