"""What the Turbo feature tests share: a probe mode's RESULT, run in the patched tree (forked from
its server) or in a fresh interpreter with a stand-in ``primus_turbo`` package on the path.

A stand-in records what the Primus-Turbo op would be given and computes with torch: the tests
that use it are DISPATCH tests of which class is built and what it passes, never of a Primus-Turbo
kernel (none is installed here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.procs import REPO, fork_server, run_python

HERE = Path(__file__).parent


def probe_result(script: str, tree: Path, mode: str, *args: str, extra_path: Path | None = None,
                 env: dict[str, str] | None = None, fresh: bool = False) -> dict:
    """The last ``RESULT {...}`` line of ``python <script> <mode> <args>`` (a probe beside this file);
    ``fresh``: in a new interpreter rather than forked, as a probe that uses CUDA must be (on a GPU
    host, importing megatron.core initialises CUDA in the server, and a forked child cannot again)."""
    path = str(HERE / script)
    env = {"PRIMUS_TURBO_BACKEND": "", **(env or {})}  # unset unless a test forces one
    if fresh:
        proc = run_python(path, mode, *args, tree=tree, check=False, env=env)
    elif extra_path is None:
        proc = fork_server(tree).run(path, mode, *args, env=env, check=False)
    else:
        proc = run_python(path, mode, *args, tree=tree, check=False,
                          env={**env, "PYTHONPATH": os.pathsep.join([str(tree), str(extra_path), str(REPO)])})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"probe {mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def write_standin(folder: Path, ops_source: str) -> Path:
    """A ``primus_turbo`` package (version ``0.0-standin``) under ``folder`` whose
    ``primus_turbo.pytorch.ops`` is ``ops_source``; returns ``folder``, for ``extra_path``."""
    ops = folder / "primus_turbo" / "pytorch"
    ops.mkdir(parents=True)
    (folder / "primus_turbo" / "__init__.py").write_text('__version__ = "0.0-standin"\n')
    (ops / "__init__.py").write_text("")
    (ops / "ops.py").write_text(ops_source)
    return folder
