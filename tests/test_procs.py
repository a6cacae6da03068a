"""The fork server of tests/procs.py behaves as ``python ARGS`` would, one fresh process per request."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ForkServer, free_port, run_python


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "shared_state.py").write_text("VALUE = 'initial'\n")
    server = ForkServer(tree, preload=("shared_state",))
    yield server
    server.close()


def test_scripts_modules_and_code_run_as_python_would(server: ForkServer, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    (tmp_path / "beside.py").write_text("NAME = 'beside'\n")
    script.write_text("import sys, beside\nprint(beside.NAME, sys.argv[1:])\n")
    assert server.run(str(script), "a", "b").stdout == "beside ['a', 'b']\n"  # its folder is on the path
    assert server.run("-m", "shared_state").returncode == 0
    got = server.run("-c", "import sys; print(sys.argv); print('to stderr', file=sys.stderr)", "x")
    assert (got.stdout, got.stderr) == ("['-c', 'x']\n", "to stderr\n")


def test_exit_status_errors_env_and_cwd(server: ForkServer, tmp_path: Path) -> None:
    assert server.run("-c", "raise SystemExit(3)", check=False).returncode == 3
    assert server.run("-c", "raise SystemExit('bad thing')", check=False).stderr == "bad thing\n"
    failed = server.run("-c", "raise KeyError('k')", check=False)
    assert failed.returncode == 1 and "KeyError: 'k'" in failed.stderr
    with pytest.raises(AssertionError, match="KeyError"):
        server.run("-c", "raise KeyError('k')")
    got = server.run("-c", "import os; print(os.environ['PROBE_VAR'], os.getcwd())", env={"PROBE_VAR": "v"},
                     cwd=tmp_path)
    assert got.stdout == f"v {tmp_path}\n"
    assert "PROBE_VAR" not in server.run("-c", "import os; print(sorted(os.environ))").stdout
    assert server.run("-c", "import sys; print(repr(sys.stdin.read()))").stdout == "''\n"
    assert server.run("-c", "import time; time.sleep(30)", check=False, timeout=1).returncode == -14


def test_each_request_is_a_fresh_process_with_the_preloaded_modules(server: ForkServer) -> None:
    """Changes a request makes to preloaded modules die with its process."""
    code = "import os, sys, shared_state; print(os.getpid(), 'shared_state' in sys.modules, shared_state.VALUE)"
    first = server.run("-c", code + "; shared_state.VALUE = 'changed'").stdout.split()
    second = server.run("-c", code).stdout.split()
    assert first[1:] == second[1:] == ["True", "initial"]
    assert first[0] != second[0] != str(os.getpid())


def test_launcher_and_free_port(tmp_path: Path) -> None:
    got = run_python("-c", "import os, sys; print(os.environ['PYTHONPATH'].split(os.pathsep)[0], sys.argv[1])",
                     "arg", tree=tmp_path)
    assert got.stdout == f"{tmp_path} arg\n"
    with pytest.raises(AssertionError, match=r"failed \(2\)"):
        run_python("-c", "raise SystemExit(2)")
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free: binding it succeeds
