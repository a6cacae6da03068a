"""Progress for long steps: one line when a step starts, one with its time when it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class UI:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"    {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """A line the user must see even with ``-q``: something was wrong and has been dealt with."""
        print(message, file=sys.stderr, flush=True)

    @contextmanager
    def task(self, name: str) -> Iterator[None]:
        if not self.quiet:
            print(f"==> {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.timings[name] = elapsed
        if not self.quiet:
            print(f"    done in {elapsed:.2f} s", file=sys.stderr, flush=True)
