"""A torchrun launcher for the training script, over the session's cpu-test trees.

The trees are ``cpu_trees`` of tests/conftest.py: ``upstream`` (no patches) and ``patched`` (the
newest patchset version), both in the cpu-test flavor. Training runs are cached per session: several tests read the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "train_tiny.py"


class Trainer:
    """Runs ``train_tiny.py`` under torchrun against a tree; remembers every run of the session."""

    def __init__(self, trees: dict[str, Path], workdir: Path) -> None:
        self.trees, self.workdir, self.runs = trees, workdir, {}  # type: ignore[var-annotated]

    def __call__(self, tree: str, nproc: int = 1, tag: str = "", **opts: object) -> dict:  # type: ignore[type-arg]
        key = json.dumps([tree, nproc, tag, opts], sort_keys=True)
        if key not in self.runs:
            self.runs[key] = self._run(tree, nproc, key, opts)
        return self.runs[key]

    def _run(self, tree: str, nproc: int, key: str, opts: dict) -> dict:  # type: ignore[type-arg]
        out = self.workdir / f"run-{len(self.runs)}.json"
        if nproc == 1:  # keep its initial weights: PP=2 and EP=2 runs start from them
            opts = {**opts, "save_init": str(out.with_suffix(".init.pt"))}
        env = {**os.environ, "PYTHONPATH": str(self.trees[tree]), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        def launch() -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-port", str(free_port()), str(SCRIPT), str(out), json.dumps(opts)]
            return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.workdir, timeout=600)

        proc = launch()
        if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
            # a gloo thread aborting at process exit, with no Python error (seen once, in CI on
            # a loaded 2-core machine): run once more rather than fail on teardown noise
            proc = launch()
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln and ln.startswith("[rank")]
            return {"failed": True, "errors": errors, "stderr": proc.stderr[-4000:]}
        result = json.loads(out.read_text())
        if nproc == 1:
            result["init"] = opts["save_init"]
        return result


@pytest.fixture(scope="session")
def train(cpu_trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    return Trainer(cpu_trees, tmp_path_factory.mktemp("runs"))
