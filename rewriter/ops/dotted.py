"""Dotted module names of files in a source tree (shared by both halves of ``import_module``)."""

from __future__ import annotations


def module_name(path: str) -> str:
    """``megatron/core/x/y.py`` -> ``megatron.core.x.y``; a package's ``__init__.py`` -> the package."""
    parts = path[:-3].split("/") if path.endswith(".py") else path.split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)
