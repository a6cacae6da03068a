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

usage: python fork_server.py MODULE[,MODULE...]   (the modules to import before forking)
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import traceback


def serve(preload: list[str]) -> None:
    for name in preload:
        importlib.import_module(name)
    # the protocol owns the real stdout; a child writes its own output to files
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    channel.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        channel.write(json.dumps(run_in_child(request)) + "\n")


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
