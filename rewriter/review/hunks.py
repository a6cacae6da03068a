"""A patch's generated change as hunks keyed by content, so two of them can be compared.

The per-patch diffs of ``build`` name places by line number, and line numbers shift with every
upstream release. Here a hunk is what it removes and adds (its content) and where it sits (file,
enclosing function or class, and the unchanged lines around it): two versions of a patch whose
hunks have the same content and placement made the same change; same content elsewhere is a
move; anything else is a change.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from rewriter.review.scopes import scope_name, spans

CONTEXT = 3
_HEADER = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")

Changes = Mapping[str, "tuple[str | None, str | None]"]


@dataclass(frozen=True)
class Hunk:
    """One contiguous change of one file."""

    path: str
    removed: tuple[str, ...]
    added: tuple[str, ...]
    line: int  # first line in the new text (in the old text for a pure deletion), 1-based
    old_line: int  # the line of the old text it replaces, or that an insertion follows
    scope: str  # qualified name of the innermost def/class around it, or <module>
    context: tuple[tuple[str, ...], tuple[str, ...]]  # unchanged lines just before and after

    @property
    def content(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.removed, self.added

    @property
    def placement(self) -> tuple[str, str, tuple[tuple[str, ...], tuple[str, ...]]]:
        return self.path, self.scope, self.context

    @property
    def where(self) -> str:
        return f"{self.path}::{self.scope} (line {self.line})"


def _lines(text: str | None) -> list[str]:
    return (text or "").splitlines()


def hunks(changes: Changes) -> list[Hunk]:
    """Every hunk of ``path -> (before, after)``, sorted by path and line."""
    out: list[Hunk] = []
    for path in sorted(changes):
        before, after = changes[path]
        a, b = _lines(before), _lines(after)
        new_spans, old_spans = spans(after), spans(before)
        matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            if j2 > j1:
                line, scope = j1 + 1, scope_name(new_spans, j1 + 1)
            else:
                line, scope = i1 + 1, scope_name(old_spans, i1 + 1)
            context = (tuple(a[max(0, i1 - CONTEXT):i1]), tuple(a[i2:i2 + CONTEXT]))
            old_line = max(i1 if i1 == i2 else i1 + 1, 1)
            out.append(Hunk(path, tuple(a[i1:i2]), tuple(b[j1:j2]), line, old_line, scope, context))
    return out


def scoped_diff(changes: Changes) -> str:
    """A unified diff whose hunk headers name the enclosing scope instead of line numbers.

    Two of these differ only where the changes themselves differ, not where upstream merely
    moved them: the input of the interdiff text.
    """
    out: list[str] = []
    for path in sorted(changes):
        before, after = changes[path]
        if before == after:
            continue
        new_spans = spans(after)
        out.append(f"--- {path}\n")
        lines = list(difflib.unified_diff(_lines(before), _lines(after), lineterm="", n=CONTEXT))[2:]
        for n, line in enumerate(lines):
            header = _HEADER.match(line)
            if header:
                out.append(f"@@ {scope_name(new_spans, _first_change(lines, n + 1, int(header.group(1))))} @@\n")
            else:
                out.append(line + "\n")
    return "".join(out)


def _first_change(lines: list[str], start: int, new_line: int) -> int:
    """The new-text line number of a diff group's first added or removed line."""
    for line in lines[start:]:
        if line.startswith(("+", "-", "@@")):
            break
        new_line += 1
    return max(new_line, 1)


def text_diff(old: str, new: str, old_name: str, new_name: str, context: int = 2) -> str:
    """A plain unified diff of two texts (empty when they are equal)."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=old_name, tofile=new_name, n=context)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
