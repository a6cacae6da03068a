"""Where a line of Python source sits: the functions and classes around it, by qualified name.

A reviewer reads "inserted at the end of ``TransformerConfig.__post_init__``", not "line 1730":
line numbers move with every upstream release, qualified names rarely do. The spans come from
:mod:`ast` (the text is only read, never rewritten), so a file that does not parse simply has
no scopes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Span:
    """One ``def`` or ``class``: its qualified name and lines (1-based, decorators included)."""

    qualname: str
    kind: str  # "function" or "class"
    start: int
    end: int
    def_line: int  # the ``def``/``class`` line itself


@lru_cache(maxsize=64)
def spans(text: str | None) -> tuple[Span, ...]:
    """Every function and class of ``text``, outermost first (cached: a comparison asks often)."""
    if not text:
        return ()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ()
    out: list[Span] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                out.append(Span(name, kind, start, child.end_lineno or child.lineno, child.lineno))
                visit(child, name + ".")
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                visit(child, prefix)  # defs sit in statement bodies, never inside expressions

    visit(tree, "")
    return tuple(out)


def enclosing(all_spans: tuple[Span, ...], line: int, kind: str | None = None) -> Span | None:
    """The innermost span (of ``kind``, if given) containing ``line``."""
    inside = [s for s in all_spans if s.start <= line <= s.end and (kind is None or s.kind == kind)]
    return max(inside, key=lambda s: s.start) if inside else None


def scope_name(all_spans: tuple[Span, ...], line: int) -> str:
    """The qualified name around ``line``, or ``<module>``."""
    span = enclosing(all_spans, line)
    return span.qualname if span else "<module>"


def find(all_spans: tuple[Span, ...], qualname: str) -> Span | None:
    return next((s for s in all_spans if s.qualname == qualname), None)


def source_of(text: str | None, qualname: str) -> str | None:
    """The source lines of one function or class, ``None`` when ``text`` has no such name."""
    span = find(spans(text), qualname)
    if span is None or text is None:
        return None
    return "".join(text.splitlines(keepends=True)[span.start - 1:span.end])
