"""Assemble the tree a wheel is built from: upstream + rewritten files + support package.

Also stamps the version (``package_info.PRE_RELEASE``) and lists ``manifest.json`` in
``MANIFEST.in`` so setuptools ships it as package data.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rewriter.emit.manifest import SUPPORT_PACKAGE
from rewriter.errors import EmitError
from rewriter.upstream import UpstreamTree

PACKAGE_INFO = "megatron/core/package_info.py"
FIXED_MTIME = 1_700_000_000  # older than any build product, so cached build outputs stay fresh


def stage_tree(
    dest: Path,
    upstream: UpstreamTree,
    changed: dict[str, str],
    support: dict[str, str],
    local_label: str,
) -> None:
    """Write the staging tree into ``dest`` (which must not exist)."""
    dest.mkdir(parents=True)
    for rel in upstream.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(upstream.root / rel, target)
    for rel, text in {**changed, **support}.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    info = dest / PACKAGE_INFO
    info.write_text(stamp_version(info.read_text(encoding="utf-8"), local_label), encoding="utf-8")
    with (dest / "MANIFEST.in").open("a", encoding="utf-8") as fh:
        fh.write(f"include {SUPPORT_PACKAGE}/manifest.json\n")
    for path in dest.rglob("*"):  # modes and times must not depend on the machine
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def stamp_version(source: str, local_label: str) -> str:
    """Set ``PRE_RELEASE`` so that ``__version__`` becomes ``<upstream>+<local_label>``."""
    import libcst as cst

    module = cst.parse_module(source)
    hits = 0

    class Stamp(cst.CSTTransformer):
        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            nonlocal hits
            names = [t.target.value for t in updated.targets if isinstance(t.target, cst.Name)]
            if names == ["PRE_RELEASE"]:
                hits += 1
                return updated.with_changes(value=cst.SimpleString(repr("+" + local_label)))
            return updated

    stamped = module.visit(Stamp())
    if hits != 1:
        raise EmitError(f"{PACKAGE_INFO}: expected one PRE_RELEASE assignment to stamp the version, found {hits}")
    return stamped.code
