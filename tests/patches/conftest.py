"""Trees of the real pinned upstream, unpatched and patched, importable from a subprocess.

The pinned megatron-core comes from its PyPI sdist (verified by digest) the first time and from
``vendor/.cache`` afterwards. Every flag's behaviour test runs megatron code from both trees in
clean interpreters and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewriter.build import Applied, stage_version

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def trees(applied: Applied, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``upstream``: the pinned source as is; ``patched``: the newest patchset version."""
    root = tmp_path_factory.mktemp("trees")
    out = {"upstream": root / "upstream", "patched": root / "patched"}
    stage_version(applied, None, out["upstream"])
    stage_version(applied, applied.patchsets.newest(), out["patched"])
    return out


def run_probe(tree: Path, script: str, *args: str) -> None:
    """Run one of the probe scripts beside this file with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def json_arg(value: object) -> str:
    return json.dumps(value)
