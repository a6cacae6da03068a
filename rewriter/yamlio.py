"""The compiler's YAML loading: :mod:`primus_yaml` with :class:`PatchsetError` as its error.

The loader itself lives in :mod:`primus_yaml`, shared with primus_runtime, which must not import
the compiler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from primus_yaml import LocatedDict
from primus_yaml import load_yaml as _load_yaml
from rewriter.errors import PatchsetError

__all__ = ["LocatedDict", "load_yaml"]


def load_yaml(path: Path, display: str | None = None, error: type[Exception] = PatchsetError) -> Any:
    """Load one YAML file; problems become ``error`` (a :class:`PatchsetError` by default)
    naming the file and line."""
    return _load_yaml(path, display, error)
