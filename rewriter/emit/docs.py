"""Render ``docs/patch-notes.md`` from the patchsets: the single source of truth for the tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from rewriter.patchset.model import Flag, Patch, Patchsets

TEMPLATES = Path(__file__).parent / "templates"


def patched_symbols(patch: Patch) -> list[str]:
    """Dotted names of what a patch edits, for the 'Patched Files' column."""
    out: list[str] = []
    for edit in patch.edits:
        module = edit.file.removesuffix(".py").replace("/", ".")
        name = f"{module}.{edit.target}" if edit.target else f"{module} (new module)"
        if name not in out:
            out.append(name)
    return out


def format_default(flag: Flag) -> str:
    if isinstance(flag.default, str):
        return flag.default
    return json.dumps(flag.default, separators=(",", ":"))


def render_patch_notes(patchsets: Patchsets) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    rows: dict[str, list[dict[str, Any]]] = {"module": [], "model": []}
    series = patchsets.series()
    for version in patchsets.versions:
        for patch in version.patches:
            for flag in patch.flags:
                # the flag's story: its own patch, then later patches gated by it too
                symbols = patched_symbols(patch)
                for user in series:
                    if flag in user.uses_flags:
                        symbols += [s for s in patched_symbols(user) if s not in symbols]
                rows[flag.table].append(
                    {
                        "flag": flag,
                        "default": format_default(flag),
                        "patch": patch,
                        "files": ", ".join(f"`{s}`" for s in symbols) if symbols else "N/A",
                        "implemented": "megatron-core rewrite" if patch.implemented_in == "core" else "primus_runtime",
                    }
                )
    return env.get_template("patch_notes.md.j2").render(rows=rows, versions=patchsets.versions)


def write_or_check(patchsets: Patchsets, target: Path, check: bool) -> bool:
    """Write the patch notes, or with ``check`` only compare; return True if up to date."""
    text = render_patch_notes(patchsets)
    current = target.read_text(encoding="utf-8") if target.is_file() else None
    if check:
        return current == text
    if current != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    return True
