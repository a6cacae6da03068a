"""Unified diffs in git's format: byte-stable, sorted by path, new files against /dev/null."""

from __future__ import annotations

import difflib
from collections.abc import Mapping


def unified_diff(changes: Mapping[str, tuple[str | None, str | None]]) -> str:
    """One diff text for ``path -> (before, after)``; ``None`` means the file does not exist."""
    out: list[str] = []
    for path in sorted(changes):
        before, after = changes[path]
        if before == after:
            continue
        a = (before or "").splitlines(keepends=True)
        b = (after or "").splitlines(keepends=True)
        out.append(f"diff --git a/{path} b/{path}\n")
        if before is None:
            out.append("new file mode 100644\n")
        src = "/dev/null" if before is None else f"a/{path}"
        dst = "/dev/null" if after is None else f"b/{path}"
        for line in difflib.unified_diff(a, b, fromfile=src, tofile=dst, n=3):
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)
