"""Temporary names that carry their owner's pid, and the removal of those a dead build left.

A build killed with -9 cannot clean up: its ``.out-partial-*`` folder, its staging tree in the
temp dir (13 MB for megatron-core), a half-imported ``.import-*`` tree stay behind. Each such
name is ``<prefix><pid>-<random>``; the next run removes the ones whose pid is no longer alive,
and any (also of the old, pid-less naming) older than :data:`MAX_AGE_S`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

MAX_AGE_S = 3600.0
_PID_RE = re.compile(r"^(\d+)-")


def owned_prefix(prefix: str) -> str:
    """``prefix`` followed by this process's pid, for ``tempfile.mkdtemp(prefix=...)``."""
    return f"{prefix}{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(path: Path, prefix: str, now: float | None = None) -> bool:
    """Left by a process that is gone, or older than an hour (whoever made it)."""
    match = _PID_RE.match(path.name[len(prefix):])
    if match and not _alive(int(match.group(1))):
        return True
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    return age > MAX_AGE_S


def clean_stale(folder: Path, prefixes: tuple[str, ...], log: Callable[[str], None] = lambda _m: None,
                accept: Callable[[Path], bool] = lambda _p: True) -> list[Path]:
    """Remove the stale entries of ``folder`` whose name starts with one of ``prefixes``."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        prefix = next((p for p in prefixes if path.name.startswith(p)), None)
        if prefix is None or not accept(path) or not is_stale(path, prefix):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path)
    if removed:
        log(f"removed {len(removed)} leftover(s) of interrupted builds in {folder}")
    return removed
