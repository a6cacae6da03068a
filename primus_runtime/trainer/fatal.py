"""One rank's fatal error ends the whole job, with its message on every rank.

The ranks of a job wait on each other (collectives, barriers). A rank that stops with an error
leaves the others waiting where they are: torchrun's agent then stops them without a word, and
under a launcher without an agent (``srun``, ``mpirun``, a script starting one process per
rank) NCCL waits until its timeout. So every rank of a multi-rank job watches one key of the
job's rendezvous store (``MASTER_ADDR:MASTER_PORT``, the store ``init_process_group`` uses):

- the first rank to fail records its message and exit code there (:func:`report`), waits a
  bounded time for the other ranks to see it, and exits as usual;
- every other rank's watcher thread prints that message on one line, ``error: rank R: ...``,
  and exits at once with the same code, wherever its main thread is blocked;
- a rank whose own error comes after the first one (a collective that broke because its peer
  left) reports the first failure instead: the cause, not its echo.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from primus_runtime.errors import PrimusRuntimeError

POLL_S = 1.0  # how often a rank looks for a peer's failure
ACK_WAIT_S = 10.0  # how long the failing rank waits for the others to see it before it exits
#: how long a rank that saw the failure stays after saying so: rank 0 may host the store (env://
#: without torchrun), and the failing rank reads the acknowledgements from it
ACK_GRACE_S = 0.5


@dataclass(frozen=True)
class Failure:
    rank: int
    exit_code: int
    message: str

    def encode(self) -> str:
        return json.dumps({"rank": self.rank, "exit_code": self.exit_code, "message": self.message})

    @classmethod
    def decode(cls, raw: bytes) -> Failure:
        data = json.loads(raw)
        return cls(int(data["rank"]), int(data["exit_code"]), str(data["message"]))


class PeerFailed(PrimusRuntimeError):
    """Another rank of the job failed first: its message and exit code, reported on this rank."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"rank {failure.rank}: {failure.message}")
        self.exit_code = failure.exit_code


def describe(exc: BaseException) -> Failure:
    """This rank's failure as the job reports it: a runtime error's own line, else the exception's."""
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
        return Failure(-1, code, f"exited with status {code}" + (f": {exc.code}" if isinstance(exc.code, str) else ""))
    if isinstance(exc, PrimusRuntimeError):
        return Failure(-1, exc.exit_code, " ".join(str(exc).split()))
    text = " ".join(str(exc).split())
    return Failure(-1, 1, f"{type(exc).__name__}: {text} (traceback in that rank's output)")


class _Watch:
    def __init__(self, store: Any, rank: int, world: int, prefix: str) -> None:
        self.store, self.rank, self.world = store, rank, world
        self.key, self.seen = f"{prefix}/failure", f"{prefix}/failure-seen"
        self.lock = threading.Lock()
        self.failing = threading.Event()

    def poll(self) -> None:
        while not self.failing.wait(POLL_S):
            try:
                with self.lock:
                    if not self.store.check([self.key]):
                        continue
                    failure = Failure.decode(self.store.get(self.key))
                    if self.failing.is_set() or failure.rank == self.rank:
                        return
                    self.store.add(self.seen, 1)
            except Exception:  # the store is gone: the job is ending anyway, nothing left to watch
                return
            sys.stderr.write(f"error: {PeerFailed(failure)}\n")
            sys.stderr.flush()
            time.sleep(ACK_GRACE_S)
            os._exit(failure.exit_code)


_watch: _Watch | None = None


def watch(rank: int, world: int) -> None:
    """Start watching for a peer's failure (multi-rank jobs with an ``env://`` rendezvous)."""
    global _watch
    if world < 2 or _watch is not None or not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        return
    import torch.distributed

    try:
        store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                           is_master=False, timeout=timedelta(seconds=60))
    except (RuntimeError, ValueError) as exc:  # the job runs on; only this safety net is missing
        logging.getLogger("primus_runtime.trainer").warning(
            "cannot watch for other ranks' failures (rendezvous store %s:%s: %s): a failing rank may leave this one "
            "waiting until the collective timeout", os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], exc)
        return
    # a restarted torchrun job reuses the store: keep each attempt's keys apart
    prefix = f"primus_runtime/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    _watch = _Watch(store, rank, world, prefix)
    threading.Thread(target=_watch.poll, name="primus-fatal-watch", daemon=True).start()


def report(exc: BaseException) -> PeerFailed | None:
    """On the failing rank: record this failure for the others, or return the one that came first.

    Returns None when this rank's error is the job's (the caller reports it as usual; also when
    an earlier rank failed the same way), or the earlier failure of another rank to report instead.
    """
    watch_ = _watch
    if watch_ is None:
        return None
    watch_.failing.set()
    mine = describe(exc)
    mine = Failure(watch_.rank, mine.exit_code, mine.message)
    try:
        with watch_.lock:
            first = Failure.decode(watch_.store.compare_set(watch_.key, "", mine.encode()))
            if first.rank != watch_.rank:
                watch_.store.add(watch_.seen, 1)
                return None if first.message == mine.message else PeerFailed(first)
        deadline = time.monotonic() + ACK_WAIT_S
        while time.monotonic() < deadline:
            with watch_.lock:
                if watch_.store.add(watch_.seen, 0) >= watch_.world - 1:
                    break
            time.sleep(0.1)
    except Exception:  # no store to tell: the launcher (or a lost connection) ends the others
        return None
    return None
