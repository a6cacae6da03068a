"""no_fp8_weight_transpose_cache: the TE argument is passed exactly when TE accepts it.

The patched ``TELinear`` and ``TELayerNormColumnParallelLinear`` are constructed for real
against a stand-in TransformerEngine (``te_probe.py``) that either accepts
``keep_fp8_weight_transpose_cache`` (as ROCm's does) or not (as NVIDIA's does).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.patches.conftest import run_probe
from tests.procs import TORCH

pytestmark = pytest.mark.slow

WARNING = "no_fp8_weight_transpose_cache=True has no effect"


def constructed(tree: Path, tmp_path: Path, te: str, flag: bool) -> dict:
    out = tmp_path / f"{tree.name}-{te}-{flag}.json"
    run_probe(tree, "te_probe.py", str(out), te, "true" if flag else "false", preload=TORCH)  # it stubs TE first
    return json.loads(out.read_text())


def test_flag_on_with_a_te_that_accepts_it(trees: dict[str, Path], tmp_path: Path) -> None:
    """ROCm-like TE: every dense TE linear gets keep_fp8_weight_transpose_cache=False, no warning."""
    got = constructed(trees["patched"], tmp_path, "rocm", True)
    assert got == {"passed": [False, False, False], "warnings": []}


def test_flag_on_with_a_te_that_does_not(trees: dict[str, Path], tmp_path: Path) -> None:
    """NVIDIA-like TE: nothing passed (no TypeError), one warning per TE class, not per layer."""
    got = constructed(trees["patched"], tmp_path, "nvidia", True)
    assert got["passed"] == ["absent", "absent", "absent"]
    assert len(got["warnings"]) == 2
    assert all(w.startswith(WARNING) for w in got["warnings"])
    assert "Linear" in got["warnings"][0] and "LayerNormLinear" in got["warnings"][1]


@pytest.mark.parametrize("te", ["rocm", "nvidia"])
def test_flag_off_is_upstream(trees: dict[str, Path], tmp_path: Path, te: str) -> None:
    """Flag off: exactly upstream's constructor arguments, no warning."""
    upstream = constructed(trees["upstream"], tmp_path, te, False)
    patched = constructed(trees["patched"], tmp_path, te, False)
    assert patched == upstream == {"passed": ["absent", "absent", "absent"], "warnings": []}
