"""Importable megatron-core trees for the runtime's tests.

``megatron_trees["patched"]`` is the newest patchset version of the pinned upstream and
``megatron_trees["upstream"]`` the pinned source as is, both in the ``cpu-test`` flavor so that
code which touches ``torch.cuda`` runs on CI's CPU-only machines. Tests run megatron code from a
tree in a subprocess (``run_in_tree``): the test process itself never imports megatron.core, so
trees with different patch levels never meet in one interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewriter.build import Applied, Paths, Upstream, apply_patchsets, stage_version
from rewriter.ui import UI
from rewriter.upstream import default_cache_dir, load_pin

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runtime_applied() -> Applied:
    paths = Paths(REPO / "patchsets", REPO / "vendor" / "upstream.yaml", default_cache_dir(REPO), REPO / "build" / "cache")
    return apply_patchsets(paths, Upstream(load_pin(paths.pin).pinned.commit), UI(quiet=True))


@pytest.fixture(scope="session")
def megatron_trees(runtime_applied: Applied, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtime-trees")
    trees = {"upstream": root / "upstream", "patched": root / "patched"}
    cache = REPO / "build" / "cache"
    stage_version(runtime_applied, None, trees["upstream"], "cpu-test", cache)
    stage_version(runtime_applied, runtime_applied.patchsets.newest(), trees["patched"], "cpu-test", cache)
    return trees


def run_in_tree(tree: Path, *args: str, cwd: Path | None = None, check: bool = True,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` with ``tree`` (and this repository) importable; output is captured."""
    merged = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)]),
              "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd or REPO, env=merged, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
