"""A Python interpreter that imports the heavy modules once and forks one child per request.

Started by :class:`tests.procs.ForkServer` with a megatron tree on ``PYTHONPATH``; it never runs
test code itself. Every interpreter start of a probe pays ~5-10 s importing torch and megatron.core
on a loaded 2-core machine; a forked child inherits those modules already imported, so it starts
in milliseconds, yet it is still a process of its own: a probe's global state (process groups,
stand-in modules in ``sys.modules``, patched module attributes) dies with its child and never
reaches the next request.

Protocol: one JSON object per line on stdin, ``{"argv": [...], "env": {...}, "cwd": "...",
"timeout": seconds}`` where ``argv`` is what would follow ``python`` (``SCRIPT ARGS``, ``-c CODE ARGS`` or
``-m MODULE ARGS``); one JSON line back per request on stdout,
``{"returncode": N, "stdout": "...", "stderr": "..."}``. The first line written is ``ready``.

A request with ``"nproc": N`` and ``"master_port": P`` starts a distributed job instead: N forked
children, one rank each, with the environment torchrun gives its workers (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) but no agent: rank 0 hosts
the ``env://`` rendezvous store, as under any launcher without one. Re-importing torch and
megatron in every rank is most of a short training run's time on CI's 2 cores; forking saves it.
When a rank fails, the others get ``RANK_GRACE_S`` to end on their own (the runtime's fatal-error
watch ends them with the failing rank's message) and are then killed, as torchrun's agent would.
The answer holds every rank's output in rank order and the first failing rank's exit status.

usage: python fork_server.py MODULE[,MODULE...]   (the modules to import before forking)
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
import traceback

#: how long the other ranks of a job may run on after one failed, before they are killed: the
#: runtime's fatal-error watch (primus_runtime/trainer/fatal.py) polls each second and the failing
#: rank waits up to 10 s for the others to see its message
RANK_GRACE_S = 15.0


def serve(preload: list[str]) -> None:
    for name in preload:
        importlib.import_module(name)
    # the protocol owns the real stdout; a child writes its own output to files
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    channel.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        answer = run_ranks(request) if request.get("nproc") else run_in_child(request)
        channel.write(json.dumps(answer) + "\n")


def run_in_child(request: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="fork-server-") as tmp:
        out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        pid = os.fork()
        if pid == 0:
            os._exit(child(request, out_path, err_path))
        _, status = os.waitpid(pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
        with open(out_path, errors="replace") as out, open(err_path, errors="replace") as err:
            return {"returncode": returncode, "stdout": out.read(), "stderr": err.read()}


def run_ranks(request: dict) -> dict:
    """One distributed job of ``request["nproc"]`` forked ranks (see the module's docstring)."""
    nproc = int(request["nproc"])
    # not a TemporaryDirectory: its finalizer would be an exit handler every rank inherits and runs
    tmp = tempfile.mkdtemp(prefix="fork-ranks-")
    try:
        ranks: dict[int, int] = {}
        for rank in range(nproc):
            env = {**(request.get("env") or {}), "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0",
                   "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(request["master_port"])}
            pid = os.fork()
            if pid == 0:
                os._exit(child({**request, "env": env}, os.path.join(tmp, f"out{rank}"), os.path.join(tmp, f"err{rank}")))
            ranks[pid] = rank
        codes = wait_for_ranks(ranks)
        outs, errs = [], []
        for rank in range(nproc):
            with open(os.path.join(tmp, f"out{rank}"), errors="replace") as out:
                outs.append(out.read())
            with open(os.path.join(tmp, f"err{rank}"), errors="replace") as err:
                errs.append(err.read())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [(rank, code) for rank, code in sorted(codes.items()) if code != 0]
    errs += [f"fork launcher: rank {rank} {describe_exit(code)}\n" for rank, code in failed]
    # the first rank that exited with a status of its own, else the first one killed (by us, often)
    statuses = [code for _, code in failed if code > 0] + [code for _, code in failed if code < 0]
    return {"returncode": statuses[0] if statuses else 0, "stdout": "".join(outs), "stderr": "".join(errs)}


def wait_for_ranks(ranks: dict[int, int]) -> dict[int, int]:
    """Each rank's exit status (negative: killed by that signal); once one fails, the rest get
    ``RANK_GRACE_S`` and are then killed."""
    codes: dict[int, int] = {}
    deadline = float("inf")  # set once a rank has failed
    while len(codes) < len(ranks):
        pid, status = os.waitpid(-1, os.WNOHANG if deadline < float("inf") else 0)
        if pid == 0:  # a rank failed; the others are still running
            if time.monotonic() > deadline:
                for other, rank in ranks.items():
                    if rank not in codes:
                        os.kill(other, signal.SIGKILL)
            time.sleep(0.1)
            continue
        codes[ranks[pid]] = os.waitstatus_to_exitcode(status)
        if codes[ranks[pid]] != 0 and deadline == float("inf"):
            deadline = time.monotonic() + RANK_GRACE_S
    return codes


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with status {code}"


def child(request: dict, out_path: str, err_path: str) -> int:
    """Run the request as ``python ARGV`` would, in this forked process; return its exit status."""
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    devnull = os.open(os.devnull, os.O_RDONLY)  # the request pipe is the server's, not the child's
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(0, closefd=False)
    signal.alarm(int(request.get("timeout") or 0))  # a hung child ends (SIGALRM) instead of the test run
    os.environ.update(request.get("env") or {})
    if request.get("cwd"):
        os.chdir(request["cwd"])
    code = 0
    try:
        run_argv(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: B036 - the child reports every failure as python would
        traceback.print_exc()
        code = 1
    if request.get("nproc"):
        # a rank ends as an interpreter does, short of finalization: its exit handlers run (those of
        # the modules the server preloaded too: multiprocessing's joins the rank's worker processes,
        # such as dist_checkpointing's writers), C++ destructors (gloo's threads) do not
        atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def run_argv(argv: list[str]) -> None:
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    serve([name for name in sys.argv[1].split(",") if name])
