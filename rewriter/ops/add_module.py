"""``add_module``: a new module in the package, rendered from the patch's template.

Works on the file tree rather than a parsed file: the module must not exist upstream (if it
does with the same text, upstream has the feature and the edit is present; with other text,
the patch conflicts with upstream).
"""

from __future__ import annotations

from rewriter.ops.base import Status
from rewriter.patchset.model import Edit


def add_module(edit: Edit, existing: str | None) -> tuple[Status, str, str]:
    """Return (status, text to write, message) for creating ``edit.file``."""
    text = edit.code or ""
    if existing is None:
        return Status.APPLIED, text, ""
    if existing == text:
        return Status.PRESENT, existing, ""
    return Status.AMBIGUOUS, existing, f"{edit.file} already exists upstream with different content"
