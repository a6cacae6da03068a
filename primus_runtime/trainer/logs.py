"""Per-rank log files and the console, at module_base.yaml's sink levels (spec §2).

Every rank writes ``<exp_root>/logs/rank_<r>.log`` at ``file_sink_level``; the console gets
rank 0's lines, the iteration lines of the rank that knows the loss and every rank's
warnings, at
``stderr_sink_level``. ``sink_level``, when set, overrides both. ``PRIMUS_LOG_LEVEL`` can only make
the console more verbose. Plain :mod:`logging`; megatron.core's own loggers go to the same places.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from primus_runtime.trainer.config import LoggingConfig

LOGGER = "primus_runtime"
# loguru's extra levels, as Primus configs name them
_LEVELS = {"TRACE": 5, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "SUCCESS": 25, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
#: pass ``extra=CONSOLE`` to show a record on the console from any rank
CONSOLE = {"console": True}


def level_number(name: str) -> int:
    return _LEVELS[str(name).upper()]


def sink_levels(cfg: LoggingConfig, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(file level, console level) as numbers."""
    env = os.environ if env is None else env
    if cfg.sink_level:
        file_level = console = level_number(cfg.sink_level)
    else:
        file_level, console = level_number(cfg.file_sink_level), level_number(cfg.stderr_sink_level)
    wanted = env.get("PRIMUS_LOG_LEVEL")
    if wanted and wanted.upper() in _LEVELS:
        console = min(console, level_number(wanted))  # only ever more verbose
    return file_level, console


class _ConsoleFilter(logging.Filter):
    """Rank 0's lines, lines marked ``CONSOLE``, and warnings from any rank; megatron.core's own
    informational lines only at DEBUG (they are in the log files)."""

    def __init__(self, rank: int, level: int) -> None:
        super().__init__()
        self.rank, self.level = rank, level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or getattr(record, "console", False):
            return True
        if record.name.startswith("megatron") and self.level > logging.DEBUG:
            return False
        return self.rank == 0


@contextlib.contextmanager
def session(cfg: LoggingConfig, exp_root: Path, rank: int, world: int) -> Iterator[logging.Logger]:
    """:func:`setup` for the length of a run; the handlers (and the log file) are closed on every path."""
    log = setup(cfg, exp_root, rank, world)
    try:
        yield log
    finally:
        for name in (LOGGER, "megatron"):
            for handler in list(logging.getLogger(name).handlers):
                logging.getLogger(name).removeHandler(handler)
                handler.close()


def setup(cfg: LoggingConfig, exp_root: Path, rank: int, world: int) -> logging.Logger:
    """Configure the ``primus_runtime`` and ``megatron`` loggers for this rank; return the trainer's."""
    file_level, console_level = sink_levels(cfg)
    for level, name in ((5, "TRACE"), (25, "SUCCESS")):
        logging.addLevelName(level, name)
    folder = exp_root / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"[%(asctime)s][rank {rank}/{world}][%(levelname)s][%(name)s] %(message)s",
                            datefmt="%Y-%m-%d %H:%M:%S")
    file_handler = logging.FileHandler(folder / f"rank_{rank}.log", mode="a", encoding="utf-8")
    file_handler.setLevel(file_level)
    file_handler.setFormatter(fmt)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(console_level)
    console.setFormatter(fmt)
    console.addFilter(_ConsoleFilter(rank, console_level))
    for name in (LOGGER, "megatron"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.addHandler(file_handler)
        logger.addHandler(console)
        logger.setLevel(min(file_level, console_level))
        logger.propagate = False
    return logging.getLogger(f"{LOGGER}.trainer")
