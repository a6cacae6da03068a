"""The one way tests start Python processes: a launcher, a free port, and fork servers per tree.

Tests never import megatron.core in the pytest process: trees with different patch levels must not
meet in one interpreter. ``run_python`` starts ``python ARGS`` with a tree first on the path.
``ForkServer`` is the fast path for the many short probes: one interpreter per (tree, preload)
imports torch and megatron.core once and forks a fresh child per request (see
``tests/fork_server.py``); ``fork_server`` keeps one per session and ``close_servers`` stops them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("fork_server.py")

#: what a probe needs before it can stub anything: torch, and megatron.core (whose import already
#: decides whether TransformerEngine is there, so a probe that stubs TE must preload torch only)
MEGATRON = ("torch", "megatron.core")
TORCH = ("torch",)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for torchrun's rendezvous or a gloo world)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_env(tree: Path | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a test's child interpreter: ``tree`` (and this repository) first on the
    path, warnings off, one OpenMP thread (the machines are 2-core), plus ``env``."""
    path = [str(p) for p in ((tree,) if tree else ()) + (REPO,)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
            **(env or {})}


def check_result(proc: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if proc.returncode != 0:
        raise AssertionError(f"python {what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def run_python(*args: str, tree: Path | None = None, cwd: Path | None = None, check: bool = True,
               env: Mapping[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a new interpreter with ``tree`` importable; output captured."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd or REPO, env=python_env(tree, env),
                          capture_output=True, text=True, timeout=timeout)
    return check_result(proc, " ".join(args)[:200]) if check else proc


class ForkServer:
    """One interpreter with ``tree`` on the path and ``preload`` imported, forking per request."""

    def __init__(self, tree: Path, preload: tuple[str, ...] = MEGATRON) -> None:
        self.tree, self.preload = tree, preload
        self.lock = threading.Lock()
        self.log = tempfile.TemporaryFile("w+")  # the server's own stderr (its children write to files)
        self.proc = subprocess.Popen([sys.executable, str(SERVER), ",".join(preload)], cwd=REPO,
                                     env=python_env(tree), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        ready = self.proc.stdout.readline() if self.proc.stdout else ""
        if ready.strip() != "ready":
            raise AssertionError(f"the fork server for {tree} did not start:\n{self._log()}")

    def _log(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def run(self, *args: str, cwd: Path | None = None, check: bool = True, env: Mapping[str, str] | None = None,
            timeout: int = 900) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` as a forked child of this server; the same result ``run_python`` gives
        (a child still running after ``timeout`` seconds is killed: return code -14, SIGALRM)."""
        return self._request({"argv": list(args), "env": dict(env or {}), "cwd": str(cwd or REPO), "timeout": timeout},
                             check)

    def _request(self, request: dict, check: bool) -> subprocess.CompletedProcess[str]:
        args = request["argv"]
        with self.lock:
            assert self.proc.stdin and self.proc.stdout
            self.proc.stdin.write(json.dumps(request) + "\n")
            line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the fork server for {self.tree} died:\n{self._log()}")
        got = json.loads(line)
        proc = subprocess.CompletedProcess([sys.executable, *args], got["returncode"], got["stdout"], got["stderr"])
        return check_result(proc, " ".join(args)[:200]) if check else proc

    def run_ranks(self, nproc: int, *args: str, cwd: Path | None = None, check: bool = True,
                  env: Mapping[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` as a distributed job of ``nproc`` forked ranks on an ``env://`` rendezvous
        (what torchrun's workers see, without its agent and its fresh interpreters); every rank's
        output, in rank order, and the first failing rank's exit status."""
        return self._request({"argv": list(args), "env": dict(env or {}), "cwd": str(cwd or REPO), "timeout": timeout,
                              "nproc": nproc, "master_port": free_port()}, check)

    def close(self) -> None:
        """Stop the server: it holds no state worth an orderly exit (its children have ended)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


_SERVERS: dict[tuple[str, tuple[str, ...]], ForkServer] = {}


def fork_server(tree: Path, preload: tuple[str, ...] = MEGATRON) -> ForkServer:
    """The session's server for ``tree`` with ``preload`` imported, started on first use."""
    key = (str(tree), preload)
    if key not in _SERVERS:
        _SERVERS[key] = ForkServer(tree, preload)
    return _SERVERS[key]


def close_servers() -> None:
    while _SERVERS:
        _SERVERS.popitem()[1].close()
