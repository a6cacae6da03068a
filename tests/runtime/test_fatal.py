"""One rank's failure ends every rank (primus_runtime/trainer/fatal.py), without megatron or a
process group: two processes share a rendezvous store as ``env://`` ranks do (rank 0 hosts it).
The trainer-level runs are in test_runtime_fault_injection.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from primus_runtime.errors import DataError
from primus_runtime.trainer.fatal import Failure, describe
from tests.procs import free_port
from tests.runtime.conftest import REPO

RANK = """
import sys, time
import torch.distributed as dist
from primus_runtime.errors import DataError
from primus_runtime.trainer import fatal

rank, port, role = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if rank == 0:
    store = dist.TCPStore("127.0.0.1", port, 2, True, wait_for_workers=False)  # rank 0 hosts it, as with env://
fatal.watch(rank, 2)
print("watching", flush=True)
if role == "wait":  # a rank blocked in a collective: only the watcher can end it
    time.sleep(120)
    sys.exit(0)
time.sleep(float(role.partition(":")[2] or 0))
first = fatal.report(DataError(f"/data/x.idx: truncated ({role})"))
print(f"error: {first or 'own'}", file=sys.stderr, flush=True)
time.sleep(2)  # the store host stays up while the other rank reads the failure
sys.exit(first.exit_code if first else 4)
"""


def _start(tmp_path: Path, port: int, rank: int, role: str) -> subprocess.Popen[str]:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(script), str(rank), str(port), role], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run_pair(tmp_path: Path, role0: str, role1: str) -> list[tuple[int, str]]:
    port = free_port()
    procs = [_start(tmp_path, port, 0, role0)]
    time.sleep(1.0)  # the store is up before rank 1 connects
    procs.append(_start(tmp_path, port, 1, role1))
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError("a rank did not end within 60 s") from None
        results.append((proc.returncode, err))
    return results


@pytest.mark.slow  # two ranks as processes, ~5 s each: out of the fast tier
def test_a_blocked_rank_ends_with_the_failing_ranks_message(tmp_path: Path) -> None:
    began = time.monotonic()
    (code0, err0), (code1, err1) = _run_pair(tmp_path, "wait", "fail")
    assert time.monotonic() - began < 30, "ended by the watcher, not by its 120 s wait"
    assert (code0, err0.strip()) == (4, "error: rank 1: /data/x.idx: truncated (fail)")
    assert (code1, err1.strip()) == (4, "error: own")


@pytest.mark.slow  # two ranks as processes, ~5 s each: out of the fast tier
def test_a_later_failure_reports_the_first_one(tmp_path: Path) -> None:
    """Rank 0 fails first; rank 1's own (different) failure comes later, as a broken collective's
    would: rank 1 reports rank 0's failure, the cause."""
    (code0, err0), (code1, err1) = _run_pair(tmp_path, "fail", "fail-later:0.2")
    assert (code0, err0.strip()) == (4, "error: own")
    assert code1 == 4 and err1.strip() == "error: rank 0: /data/x.idx: truncated (fail)"


def test_describe_keeps_exit_codes_and_one_line() -> None:
    assert describe(DataError("a\nb")) == Failure(-1, 4, "a b")
    assert describe(SystemExit(3)) == Failure(-1, 3, "exited with status 3")
    assert describe(ValueError("bad")) == Failure(-1, 1, "ValueError: bad (traceback in that rank's output)")
