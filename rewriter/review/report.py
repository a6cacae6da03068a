"""An interdiff as text for a terminal, Markdown for a CI job summary, or JSON for tools.

The Markdown fits a GitHub job summary (1 MiB at most): a verdict table, then each patch that is
not unchanged with its reasons and interdiff folded in ``<details>``, each diff cut to
:data:`MAX_DIFF_LINES` lines with a pointer to the HTML page for the rest.
"""

from __future__ import annotations

import json
from typing import Any

from rewriter.review.interdiff import Interdiff

MAX_DIFF_LINES = 150
QUIET_VERDICTS = ("unchanged",)


def title(diff: Interdiff) -> str:
    if diff.old.version == diff.new.version:
        return f"{diff.new.version}: {diff.old.label} -> {diff.new.label}"
    return f"{diff.old.version} on {diff.old.label} -> {diff.new.version} on {diff.new.label}"


def _counts(diff: Interdiff) -> str:
    return ", ".join(f"{n} {v}" for v, n in diff.counts().items()) or "no patches"


def _cut(text: str, limit: int = MAX_DIFF_LINES) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= limit:
        return text
    return "".join(lines[:limit]) + f"... {len(lines) - limit} more lines (the --html page has them all)\n"


def render_text(diff: Interdiff) -> str:
    """For a terminal: one line per patch, reasons indented, then the interdiffs that matter."""
    out = [f"interdiff {title(diff)}", _counts(diff), ""]
    for item in diff.patches:
        patch = diff.patch(item)
        out.append(f"{item.verdict:14s} {patch.version}  {item.patch_id}")
        out += [f"{'':17s}{reason}" for reason in item.reasons()]
    for item in diff.patches:
        if item.verdict not in QUIET_VERDICTS and item.interdiff:
            out += ["", f"== {item.patch_id}: {item.verdict}", item.interdiff.rstrip("\n")]
    for change, users in diff.upstream_functions():
        out += ["", f"== upstream changed {change.path}::{change.qualname} (patched by {', '.join(users)})",
                change.diff.rstrip("\n")]
    if diff.generated:
        out += ["", "== generated sources", diff.generated.rstrip("\n")]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(diff: Interdiff) -> str:
    """For a CI job summary (``>> $GITHUB_STEP_SUMMARY``)."""
    out = [f"## Interdiff {_cell(title(diff))}", "", f"**{_counts(diff)}**", "",
           "| patch | version | flags | verdict | upstream changed in touched functions |",
           "| --- | --- | --- | --- | --- |"]
    for item in diff.patches:
        patch = diff.patch(item)
        flags = ", ".join(f"`{f}`" for f in patch.flag_names) or "—"
        touched = ", ".join(f"`{c.qualname}`" for c in item.upstream_changes) or "—"
        out.append(f"| `{item.patch_id}` | {patch.version} | {flags} | {item.verdict} | {touched} |")
    for item in diff.patches:
        if item.verdict in QUIET_VERDICTS:
            continue
        out += ["", f"### `{item.patch_id}`: {item.verdict}", ""]
        out += [f"- {_cell(reason)}" for reason in item.reasons()]
        out += _details("interdiff (old patch diff -> new patch diff)", item.interdiff)
    functions = diff.upstream_functions()
    if functions:
        out += ["", "### Upstream changes inside patched functions", ""]
        for change, users in functions:
            out += _details(f"<code>{change.path}::{change.qualname}</code> (patched by {', '.join(users)})", change.diff)
    if diff.generated:
        out += ["", "### Generated sources"]
        out += _details("diff of the generated sources", diff.generated, 4 * MAX_DIFF_LINES)
    return "\n".join(out) + "\n"


def _details(summary: str, text: str, limit: int = MAX_DIFF_LINES) -> list[str]:
    """A folded diff block (nothing for an empty diff)."""
    if not text:
        return []
    return ["", f"<details><summary>{summary}</summary>", "", "```diff", _cut(text, limit).rstrip("\n"), "```", "",
            "</details>"]


def to_json(diff: Interdiff) -> dict[str, Any]:
    """Everything the other formats show, as data."""
    return {
        "kind": diff.kind,
        "old": {"label": diff.old.label, "patchset": diff.old.version},
        "new": {"label": diff.new.label, "patchset": diff.new.version},
        "counts": diff.counts(),
        "patches": [
            {
                "id": item.patch_id,
                "version": diff.patch(item).version,
                "flags": list(diff.patch(item).flag_names),
                "old_state": item.old_state,
                "new_state": item.new_state,
                "verdict": item.verdict,
                "reasons": item.reasons(),
                "interdiff": item.interdiff,
                "upstream_changes": [{"path": c.path, "function": c.qualname, "diff": c.diff}
                                     for c in item.upstream_changes],
            }
            for item in diff.patches
        ],
        "generated": diff.generated,
    }


def render_json(diff: Interdiff) -> str:
    return json.dumps(to_json(diff), indent=2) + "\n"


RENDERERS = {"text": render_text, "md": render_markdown, "json": render_json}
