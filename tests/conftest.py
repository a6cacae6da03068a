"""Shared set-up: the repository's packages importable, and the megatron-core trees every suite uses.

``applied`` is the patchsets applied to the pinned upstream (from the sdist the first time, from
``vendor/.cache`` and ``build/cache`` afterwards). ``cpu_trees`` stages, once per session, the
pinned source without patches (``upstream``) and with the newest patchset (``patched``) in the
``cpu-test`` flavor, so megatron code that touches ``torch.cuda`` runs on CI's CPU-only machines;
``trainer_trees`` are those with megatron's compiled dataset helper, for training runs.
Tests run megatron code from these trees in subprocesses, never in the pytest process
(``tests/procs.py``: the one launcher, free-port helper and per-tree fork servers).

Markers by cost (registered in pyproject.toml): ``slow`` builds the real tree or starts
subprocesses; ``training`` marks multi-process training runs (torchrun), which are ``slow`` too.
The modules in ``TRAINING_MODULES`` are marked here, so their bodies need not repeat it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rewriter.build import Applied, Paths, Upstream, apply_patchsets, stage_version  # noqa: E402
from rewriter.ui import UI  # noqa: E402
from rewriter.upstream import default_cache_dir, load_pin  # noqa: E402
from tests.procs import close_servers, run_python  # noqa: E402

BUILD_CACHE = ROOT / "build" / "cache"

#: test modules of multi-process training runs that do not mark themselves
TRAINING_MODULES = ("tests/cpu/test_training.py", "tests/cpu/test_flags_training.py", "tests/cpu/test_pipeline_flags.py",
                    "tests/cpu/test_zero_bubble.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``training`` tests are ``slow`` as well, so ``-m "not slow"`` is the fast tier; ``gpu`` tests
    are selected only where CUDA is (a CPU host deselects them: they are not counted as skipped work)."""
    for item in items:
        if item.path.relative_to(ROOT).as_posix() in TRAINING_MODULES:
            item.add_marker(pytest.mark.training)
        if item.get_closest_marker("training") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if not torch.cuda.is_available():
        deselected = [item for item in items if item.get_closest_marker("gpu")]
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture(scope="session", autouse=True)
def _fork_servers() -> Iterator[None]:
    """Stop the session's fork servers (tests/procs.py) when the session ends."""
    yield
    close_servers()


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


@pytest.fixture(scope="session")
def helpers_dir(tmp_path_factory: pytest.TempPathFactory, cpu_trees: dict[str, Path]) -> Path:
    """megatron's C++ dataset helper (``helpers_cpp``), compiled once per session beside (not into)
    the shared trees; GPTDataset, mock data included, needs it and a source tree does not have it."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to compile megatron's dataset helpers")
    out = tmp_path_factory.mktemp("helpers")
    includes = run_python("-m", "pybind11", "--includes").stdout.split()
    source = cpu_trees["upstream"] / "megatron" / "core" / "datasets" / "helpers.cpp"
    subprocess.run(["g++", "-O1", "-shared", "-std=c++17", "-fPIC", *includes, str(source), "-o",
                    str(out / f"helpers_cpp{sysconfig.get_config_var('EXT_SUFFIX')}")], check=True)
    return out


@pytest.fixture(scope="session")
def trainer_trees(cpu_trees: dict[str, Path], helpers_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Path]:
    """``cpu_trees`` with the compiled dataset helper in them, as a wheel has it: what every training
    run of the session uses (one fork server each). A test that changes its tree makes its own
    (``tests.runtime.trainer_helpers.make_trainer_tree``)."""
    from tests.runtime.trainer_helpers import make_trainer_tree

    root = tmp_path_factory.mktemp("trainer-trees")
    return {name: make_trainer_tree(tree, root / name, helpers_dir) for name, tree in cpu_trees.items()}
