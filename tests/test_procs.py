"""The fork server of tests/procs.py behaves as ``python ARGS`` would, one fresh process per request,
and ``run_ranks`` starts a job of forked ranks as torchrun would start its workers."""

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


# --- run_ranks: the forked-rank launcher the training tests use in place of torchrun ---------------

RANK_SCRIPT = """
import os, sys
rank = int(os.environ["RANK"])
print(f"rank {rank} of {os.environ['WORLD_SIZE']}, local {os.environ['LOCAL_RANK']}, "
      f"store {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
sys.exit(int(sys.argv[1]) if rank == 1 else 0)
"""


def test_every_rank_gets_the_worker_environment_and_its_output_comes_back_in_order(server: ForkServer,
                                                                                    tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    proc = server.run_ranks(3, str(script), "0")
    lines = proc.stdout.splitlines()
    assert [line.split(",")[0] for line in lines] == ["rank 0 of 3", "rank 1 of 3", "rank 2 of 3"]
    assert len({line.split("store ")[1] for line in lines}) == 1  # one rendezvous for the job


def test_the_first_failing_rank_decides_the_exit_status_and_is_named(server: ForkServer, tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    proc = server.run_ranks(2, str(script), "3", check=False)
    assert proc.returncode == 3
    assert "fork launcher: rank 1 exited with status 3" in proc.stderr
    assert "rank 0" not in proc.stderr  # rank 0 ended well


def test_the_server_survives_a_job_and_its_temporary_folders_with_it(server: ForkServer, tmp_path: Path) -> None:
    """Ranks run their exit handlers as an interpreter does, and the server keeps none that would
    touch its own state (its rank-output folder is no TemporaryDirectory), so the next job still
    finds the server whole."""
    script = tmp_path / "atexit.py"
    script.write_text("import atexit, tempfile\nkeep = tempfile.TemporaryDirectory()\natexit.register(print, 'bye')\n")
    for _ in range(2):
        proc = server.run_ranks(2, str(script))
        assert proc.stdout == "bye\nbye\n"


def test_a_rank_waits_for_its_worker_processes_as_an_interpreter_does(tmp_path: Path) -> None:
    """A rank's multiprocessing workers (dist_checkpointing's writers in training) are joined when
    it ends, by the exit handler multiprocessing.util registered when the server imported it (torch
    imports it): none is left running after the job."""
    script = tmp_path / "worker.py"
    script.write_text("import multiprocessing, os, sys, time\n"
                      "def work(path):\n    time.sleep(1)\n    open(path, 'w').write(str(os.getpid()))\n"
                      "if __name__ == '__main__':\n"
                      "    multiprocessing.get_context('fork').Process(target=work, args=(sys.argv[1],)).start()\n")
    done = tmp_path / "done"
    server = ForkServer(tmp_path, preload=("multiprocessing.util",))
    try:
        server.run_ranks(1, str(script), str(done))
    finally:
        server.close()
    assert done.exists(), "the rank ended without waiting for its worker"
