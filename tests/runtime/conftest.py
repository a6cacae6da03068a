"""Running megatron code for the runtime's tests.

The trees are ``cpu_trees`` of tests/conftest.py (``patched``: the newest patchset version;
``upstream``: the pinned source as is; both cpu-test flavor). Tests run megatron code from a
tree in a subprocess (``run_in_tree``): the test process itself never imports megatron.core, so
trees with different patch levels never meet in one interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_in_tree(tree: Path, *args: str, cwd: Path | None = None, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` with ``tree`` (and this repository) importable; output is captured."""
    merged = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)]),
              "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd or REPO, env=merged, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
