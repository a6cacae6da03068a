"""Shared set-up: the repository's packages importable, and the megatron-core trees every suite uses.

``applied`` is the patchsets applied to the pinned upstream (from the sdist the first time, from
``vendor/.cache`` and ``build/cache`` afterwards). ``cpu_trees`` stages, once per session, the
pinned source without patches (``upstream``) and with the newest patchset (``patched``) in the
``cpu-test`` flavor, so megatron code that touches ``torch.cuda`` runs on CI's CPU-only machines.
Tests run megatron code from these trees in subprocesses, never in the pytest process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rewriter.build import Applied, Paths, Upstream, apply_patchsets, stage_version  # noqa: E402
from rewriter.ui import UI  # noqa: E402
from rewriter.upstream import default_cache_dir, load_pin  # noqa: E402

BUILD_CACHE = ROOT / "build" / "cache"


@pytest.fixture(scope="session")
def applied() -> Applied:
    paths = Paths(ROOT / "patchsets", ROOT / "vendor" / "upstream.yaml", default_cache_dir(ROOT), BUILD_CACHE)
    return apply_patchsets(paths, Upstream(load_pin(paths.pin).pinned.commit), UI(quiet=True))


@pytest.fixture(scope="session")
def cpu_trees(applied: Applied, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cpu-trees")
    trees = {"upstream": root / "upstream", "patched": root / "patched"}
    stage_version(applied, None, trees["upstream"], "cpu-test", BUILD_CACHE)
    stage_version(applied, applied.patchsets.newest(), trees["patched"], "cpu-test", BUILD_CACHE)
    return trees
