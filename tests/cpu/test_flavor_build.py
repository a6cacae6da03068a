"""The cpu-test flavor is only in cpu-test builds: the default build's outputs have none of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewriter.cli import main

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_default_build_has_none_of_the_flavor(tmp_path: Path) -> None:
    default, flavored = tmp_path / "default", tmp_path / "cpu"
    assert main(["build", "--root", str(REPO), "--no-wheel", "--out", str(default), "-q"]) == 0
    assert main(["build", "--root", str(REPO), "--no-wheel", "--flavor", "cpu-test", "--out", str(flavored), "-q"]) == 0

    for diff in (default / "diffs").rglob("*.diff"):
        assert "_primus_cuda" not in diff.read_text(), diff
    assert not list(default.glob("flavor-*.diff"))
    assert json.loads((default / "manifest.json").read_text())["flavor"] == "default"

    manifest = json.loads((flavored / "manifest.json").read_text())
    assert manifest["flavor"] == "cpu-test"
    assert manifest["package"]["version"] == "0.16.1+primus.v0.4.0.cputest"
    flavor_diff = (flavored / "flavor-cpu-test.diff").read_text()
    assert "+from megatron.core._primus import cuda as _primus_cuda  # cpu-test flavor" in flavor_diff
    assert "-            self.weight.data = self.weight.data.to(device=torch.cuda.current_device())" in flavor_diff
    # the patch diffs are the same whatever the flavor
    for diff in (default / "diffs").rglob("*.diff"):
        assert diff.read_text() == (flavored / diff.relative_to(default)).read_text()
