"""Trees of the real pinned upstream, unpatched and patched, and how probes run in them.

The pinned megatron-core comes from its PyPI sdist (verified by digest) the first time and from
``vendor/.cache`` afterwards. Every flag's behaviour test runs megatron code from both trees in
clean interpreters and compares: each probe is a fresh process forked from the tree's fork server
(``tests/procs.py``), so it pays no torch/megatron import of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewriter.build import Applied, stage_version
from tests.procs import MEGATRON, REPO, fork_server

HERE = Path(__file__).parent

__all__ = ["HERE", "REPO", "json_arg", "run_probe"]


@pytest.fixture(scope="session")
def trees(applied: Applied, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``upstream``: the pinned source as is; ``patched``: the newest patchset version."""
    root = tmp_path_factory.mktemp("trees")
    out = {"upstream": root / "upstream", "patched": root / "patched"}
    stage_version(applied, None, out["upstream"])
    stage_version(applied, applied.patchsets.newest(), out["patched"])
    return out


def run_probe(tree: Path, script: str, *args: str, preload: tuple[str, ...] = MEGATRON) -> None:
    """Run one of the probe scripts beside this file as a fresh process with ``tree`` first on the
    path (forked from the tree's server, which has ``preload`` imported)."""
    fork_server(tree, preload).run(str(HERE / script), *args)


def json_arg(value: object) -> str:
    return json.dumps(value)
