"""primus-rewriter: apply versioned, flag-gated patchsets to a pinned megatron-core source.

Data flow: :mod:`rewriter.upstream` (pinned source) + :mod:`rewriter.patchset` (YAML and
templates) → :mod:`rewriter.engine` (libcst operations in :mod:`rewriter.ops`) →
:mod:`rewriter.semantic` (does the patched code still resolve on that release) →
:mod:`rewriter.emit` (staging tree, wheel, diffs, manifest, docs). :mod:`rewriter.releases` adds
releases to the pin file; :mod:`rewriter.matrix` applies a series to several releases, one
verdict per patch (``apply_to_release`` is the building block for tools comparing releases).
:mod:`rewriter.review` compares two applied series (``interdiff``: two upstreams, or two
revisions of the patchsets).

The names in ``__all__`` are the public API, for tests, benchmarks and other tools; anything else
(and every underscore name) may change without notice. They are imported on first use, so
``import rewriter`` stays cheap and loading patchsets never imports libcst.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rewriter.build import Applied, Paths, Upstream, apply_patchsets, build, stage_version
    from rewriter.cli import main
    from rewriter.emit.docs import render_patch_notes
    from rewriter.emit.manifest import build_manifest
    from rewriter.engine import SeriesResult, apply_series
    from rewriter.errors import ApplyError, DriftError, PatchsetError, RewriterError, UpstreamError
    from rewriter.matrix import PatchVerdict, ReleaseColumn, apply_to_release, release_matrix
    from rewriter.patchset.loader import load_patchsets
    from rewriter.patchset.model import Edit, Flag, Patch, Patchsets, PatchsetVersion
    from rewriter.releases import add_release
    from rewriter.review.html import render_html
    from rewriter.review.interdiff import Interdiff, Side, compare
    from rewriter.review.report import render_markdown
    from rewriter.semantic import Problem, check_series
    from rewriter.ui import UI
    from rewriter.upstream import Pin, UpstreamTree, default_cache_dir, load_pin, resolve, resolve_release

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("Applied", "Paths", "Upstream", "apply_patchsets", "build", "stage_version"), "rewriter.build"),
    "main": "rewriter.cli",
    "render_patch_notes": "rewriter.emit.docs",
    "build_manifest": "rewriter.emit.manifest",
    **dict.fromkeys(("SeriesResult", "apply_series"), "rewriter.engine"),
    **dict.fromkeys(("ApplyError", "DriftError", "PatchsetError", "RewriterError", "UpstreamError"), "rewriter.errors"),
    "load_patchsets": "rewriter.patchset.loader",
    **dict.fromkeys(("PatchVerdict", "ReleaseColumn", "apply_to_release", "release_matrix"), "rewriter.matrix"),
    "add_release": "rewriter.releases",
    **dict.fromkeys(("Problem", "check_series"), "rewriter.semantic"),
    **dict.fromkeys(("Edit", "Flag", "Patch", "Patchsets", "PatchsetVersion"), "rewriter.patchset.model"),
    "render_html": "rewriter.review.html",
    **dict.fromkeys(("Interdiff", "Side", "compare"), "rewriter.review.interdiff"),
    "render_markdown": "rewriter.review.report",
    "UI": "rewriter.ui",
    **dict.fromkeys(("Pin", "UpstreamTree", "default_cache_dir", "load_pin", "resolve", "resolve_release"),
                    "rewriter.upstream"),
}

__all__ = [
    "Applied", "ApplyError", "DriftError", "Edit", "Flag", "Interdiff", "Patch", "PatchVerdict", "PatchsetError",
    "PatchsetVersion", "Patchsets", "Paths", "Pin", "Problem", "ReleaseColumn", "RewriterError", "SeriesResult",
    "Side", "UI", "Upstream", "UpstreamError", "UpstreamTree", "add_release", "apply_patchsets", "apply_series",
    "apply_to_release", "build", "build_manifest", "check_series", "compare", "default_cache_dir", "load_patchsets",
    "load_pin", "main", "release_matrix", "render_html", "render_markdown", "render_patch_notes", "resolve",
    "resolve_release", "stage_version",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rewriter' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
