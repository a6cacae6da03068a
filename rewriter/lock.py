"""An exclusive lock on a cache folder, held while a build fills it.

Two first builds on an empty upstream cache would both import the sdist and race to rename the
result into place ("Directory not empty" for the loser). With the lock, the second waits, then
finds the first one's verified tree and uses it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


@contextmanager
def folder_lock(folder: Path, log: Callable[[str], None] = lambda _m: None) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively (released by the kernel if the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build that is filling {folder}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
