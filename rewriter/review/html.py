"""The review page: one self-contained HTML file for an interdiff.

Per patch (grouped by patchset version, with an index by flag): its verdict and reasons, its
summary, flag table rows and manifest entry beside the code, then side by side what the patch
does to each file on the new side, the old and new per-patch diffs where they differ, and
links to upstream's own changes inside the functions the patch touches (each shown once, at the
end). The edits' anchors (the ``def``
or ``class`` line of an edit's target, and the statement an edit is anchored at) are
highlighted. :mod:`difflib` aligns the two sides, Pygments highlights them and jinja2 renders
the page; the stylesheet is inlined, so the file opens anywhere, offline.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name

from rewriter.emit.docs import format_default
from rewriter.emit.manifest import patch_entry
from rewriter.patchset.model import Patch
from rewriter.review.hunks import scoped_diff
from rewriter.review.interdiff import FunctionChange, Interdiff, PatchInterdiff, Side
from rewriter.review.report import title
from rewriter.review.scopes import find, source_of, spans

TEMPLATES = Path(__file__).parent / "templates"
CONTEXT = 3
LEAD = 40  # lines lexed before a shown run, for the lexer's context
CSS_SCOPE = ".code"


@dataclass(frozen=True)
class Row:
    """One line of a side-by-side table; ``kind`` is difflib's tag, or ``skip`` for folded lines."""

    kind: str
    left_no: int | None
    left: Markup
    right_no: int | None
    right: Markup
    left_anchor: bool = False
    right_anchor: bool = False


def highlighted_lines(text: str, language: str) -> list[Markup]:
    """``text`` highlighted, one balanced HTML fragment per line (Pygments closes spans per line)."""
    if not text:
        return []
    lexer = get_lexer_by_name(language, stripnl=False, ensurenl=True)
    html = highlight(text, lexer, HtmlFormatter(nowrap=True))
    lines = html.split("\n")
    count = len(text.splitlines())
    return [Markup(line) for line in lines[:count]]


def side_by_side(left: str, right: str, language: str, left_anchors: frozenset[int] = frozenset(),
                 right_anchors: frozenset[int] = frozenset(), context: int = CONTEXT) -> list[Row]:
    """Aligned rows of two texts; equal lines are folded except ``context`` lines around each
    change and the anchor lines (a reviewer always sees where an edit is anchored)."""
    a, b = left.splitlines(), right.splitlines()
    plan: list[tuple[str, int | None, int | None]] = []  # (kind, left index, right index)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            shown = [i for i in range(i1, i2)
                     if (i1 > 0 and i < i1 + context) or (i2 < len(a) and i >= i2 - context)
                     or i + 1 in left_anchors or j1 + i - i1 + 1 in right_anchors]
            previous = i1 - 1
            for i in shown:
                if i > previous + 1:
                    plan.append(("skip", None, None))
                plan.append(("equal", i, j1 + i - i1))
                previous = i
            if previous < i2 - 1:
                plan.append(("skip", None, None))
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            plan.append((tag, i1 + k if i1 + k < i2 else None, j1 + k if j1 + k < j2 else None))
    ha = _highlight_shown(a, {i for _, i, _ in plan if i is not None}, language)
    hb = _highlight_shown(b, {j for _, _, j in plan if j is not None}, language)
    empty = Markup("")
    return [Row(kind,
                None if i is None else i + 1, empty if i is None else ha[i],
                None if j is None else j + 1, empty if j is None else hb[j],
                i is not None and i + 1 in left_anchors, j is not None and j + 1 in right_anchors)
            for kind, i, j in plan]


def _highlight_shown(lines: list[str], shown: set[int], language: str) -> dict[int, Markup]:
    """Highlighted HTML of the ``shown`` lines only.

    Each run of shown lines is lexed with :data:`LEAD` lines before it for context: lexing a
    2000-line file for every patch that touches it made a page take a minute. A run that starts
    deep inside a long docstring may be coloured as code; the text is always exact.
    """
    out: dict[int, Markup] = {}
    runs: list[list[int]] = []
    for i in sorted(shown):
        if runs and i - runs[-1][-1] <= LEAD:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        start = max(0, run[0] - LEAD)
        window = highlighted_lines("\n".join(lines[start:run[-1] + 1]) + "\n", language)
        out.update((i, window[i - start]) for i in run)
    return out


def anchor_lines(patch: Patch, path: str, text: str | None) -> frozenset[int]:
    """Lines of ``text`` where the patch's edits of ``path`` are anchored."""
    if not text:
        return frozenset()
    lines = text.splitlines()
    found: set[int] = set()
    all_spans = spans(text)
    for edit in patch.edits:
        if edit.file != path:
            continue
        span = find(all_spans, edit.target) if edit.target else None
        if span is not None:
            found.add(span.def_line)
        anchor = str(edit.args.get("anchor") or "").strip().splitlines()
        if anchor:
            first = anchor[0].strip()
            lo, hi = (span.start, span.end) if span else (1, len(lines))
            found.update(n for n in range(lo, hi + 1) if lines[n - 1].strip() == first)
    return frozenset(found)


def _flag_rows(patch: Patch) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": f.type, "default": format_default(f), "version": f.version,
             "table": f.table, "description": f.description} for f in patch.flags]


def _files(patch: Patch, changes: Any) -> list[dict[str, Any]]:
    out = []
    for path in sorted(changes):
        before, after = changes[path]
        out.append({"path": path, "new_file": before is None,
                    "rows": side_by_side(before or "", after or "", "python",
                                         anchor_lines(patch, path, before), anchor_lines(patch, path, after))})
    return out


def _patch_view(diff: Interdiff, item: PatchInterdiff) -> dict[str, Any]:
    patch = diff.patch(item)
    shown: Side = diff.new if diff.new.patch(item.patch_id) is not None else diff.old
    changes = item.new_changes if shown is diff.new else item.old_changes
    old_text, new_text = scoped_diff(item.old_changes), scoped_diff(item.new_changes)
    return {
        "item": item,
        "patch": patch,
        "flags": _flag_rows(patch),
        "uses_flags": [f.name for f in patch.uses_flags],
        "manifest": json.dumps(patch_entry(patch, shown.result), indent=2),
        "side": shown.label,
        "files": _files(patch, changes),
        "interdiff": side_by_side(old_text, new_text, "diff") if old_text != new_text else [],
        "upstream": [{"change": c, "id": function_id(c)} for c in item.upstream_changes],
    }


def function_id(change: FunctionChange) -> str:
    """The HTML id of an upstream function's section (shown once, linked from every patch touching it)."""
    return "upstream-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{change.path}-{change.qualname}")


def _function_source(side: Side, path: str, qualname: str) -> str:
    return source_of(side.read(path), qualname) or ""


def render_html(diff: Interdiff) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    views = [_patch_view(diff, item) for item in diff.patches]
    versions: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        versions.setdefault(view["patch"].version, []).append(view)
    flags = sorted((f["name"], view["item"].patch_id, view["item"].verdict) for view in views for f in view["flags"])
    generated = highlighted_lines(diff.generated, "diff")
    upstream = [{"change": change, "id": function_id(change), "users": users,
                 "rows": side_by_side(_function_source(diff.old, change.path, change.qualname),
                                      _function_source(diff.new, change.path, change.qualname), "python")}
                for change, users in diff.upstream_functions()]
    return env.get_template("review.html.j2").render(
        title=title(diff), diff=diff, counts=diff.counts(), versions=versions, flags=flags,
        generated=generated, upstream=upstream, pygments_css=Markup(HtmlFormatter().get_style_defs(CSS_SCOPE)),
    )


def write_html(diff: Interdiff, out: Path) -> None:
    """Write the page atomically (a temporary name beside it, then renamed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(diff), encoding="utf-8")
    tmp.replace(out)
