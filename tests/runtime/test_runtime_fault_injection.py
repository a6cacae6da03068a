"""Fault injection into ``python -m primus_runtime train`` (issue 11 items 5, 6, 10): damaged
checkpoints, unusable save folders, a full disk, damaged data and dataset caches, a helper that
must be compiled, one rank failing alone.

Each failing run must end every rank in bounded time with one line, ``error: ...``, naming the
file at fault, and the documented exit code (4 data, 5 checkpoints) on every rank. The ranks
are started the way ``srun`` or ``mpirun`` starts them (one process per rank, ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment), not under torchrun, whose
agent would stop the other ranks itself: so every rank's own exit code and message are seen,
and nothing but the runtime ends a rank whose peer failed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.runtime.conftest import REPO, run_in_tree
from tests.runtime.trainer_helpers import free_port, make_trainer_tree, metrics, write_experiment

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 300  # far below the 10-minute collective timeout a hung rank would wait for


@dataclass
class RankResult:
    rank: int
    returncode: int
    stderr: str

    def error_line(self) -> str:
        """The rank's one error line; a traceback is a failure of the runtime, not of the input."""
        assert "Traceback" not in self.stderr, f"rank {self.rank}:\n{self.stderr[-4000:]}"
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, f"rank {self.rank}:\n{self.stderr[-4000:]}"
        return lines[0]


def launch(tree: Path, exp: Path, nproc: int = 2, rank_env: dict[int, dict[str, str]] | None = None
           ) -> list[RankResult]:
    """Start one ``train`` process per rank as srun would; wait for all, at most RUN_TIMEOUT_S."""
    port, procs, logs = free_port(), [], []
    for rank in range(nproc):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)]), "PYTHONWARNINGS": "ignore",
               "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), **(rank_env or {}).get(rank, {})}
        log = open(exp.parent / f"{exp.stem}.rank{rank}.stderr", "w+")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "primus_runtime", "train", "--exp", str(exp)],
                                      env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True))
    try:
        for proc in procs:
            proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        raise AssertionError(f"{exp.stem}: a rank was still running after {RUN_TIMEOUT_S} s") from None
    results = []
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        results.append(RankResult(rank, proc.returncode, log.read()))
        log.close()
    return results


def succeeded(results: list[RankResult]) -> list[RankResult]:
    for result in results:
        assert result.returncode == 0, f"rank {result.rank} ({result.returncode}):\n{result.stderr[-4000:]}"
    return results


def failed(results: list[RankResult], exit_code: int, *words: str) -> list[str]:
    """Every rank exited with ``exit_code`` and one error line holding ``words``; the lines."""
    lines = []
    for result in results:
        line = result.error_line()
        assert result.returncode == exit_code, f"rank {result.rank}: {result.returncode}: {line}"
        for word in words:
            assert word in line, line
        lines.append(line)
    return lines


@pytest.fixture(scope="module")
def tree(cpu_trees: dict[str, Path], helpers_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_trainer_tree(cpu_trees["patched"], tmp_path_factory.mktemp("faults") / "tree", helpers_dir)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-runs")


# --- checkpoints (item 5) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tree: Path, work: Path) -> Path:
    """Checkpoints of iterations 2 and 4."""
    exp = write_experiment(work, "saved", {"save": str(work / "saved"), "save_interval": 2, "train_iters": 4})
    succeeded(launch(tree, exp))
    return work / "saved"


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


DAMAGE = {
    "common-truncated": (lambda it: _truncate(it / "common.pt", 100), "common.pt"),
    "distcp-truncated": (lambda it: _truncate(sorted(it.glob("*.distcp"))[0], 1000), ".distcp: has 1000 bytes"),
    "metadata-missing": (lambda it: (it / ".metadata").unlink(), ".metadata is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_one_line_exit_5_on_every_rank(tree: Path, work: Path, saved: Path,
                                                             damage: str) -> None:
    ckpt = work / f"damaged-{damage}"
    shutil.copytree(saved, ckpt)
    harm, words = DAMAGE[damage]
    harm(ckpt / "iter_0000004")
    exp = write_experiment(work, f"load-{damage}", {"load": str(ckpt), "train_iters": 6})
    failed(launch(tree, exp), 5, str(ckpt / "iter_0000004"), words, "load an earlier iter_* folder")


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {proc.stderr.strip()}")


@pytest.fixture
def mounts():
    """Mount points to unmount after the test, whatever happened."""
    points: list[Path] = []
    yield points
    for point in points:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.parametrize("kind", ["is-a-file", "under-a-file", "read-only"])
def test_unusable_save_folder_is_refused_before_training(tree: Path, work: Path, mounts: list[Path],
                                                         kind: str) -> None:
    base = work / f"save-{kind}"
    base.mkdir()
    if kind == "is-a-file":
        save = base / "ckpt"
        save.write_text("not a folder")
    elif kind == "under-a-file":
        (base / "file").write_text("not a folder")
        save = base / "file" / "ckpt"
    else:  # root ignores permission bits: a read-only mount is what refuses root
        _mount_tmpfs(base / "ro", "ro,size=1m")
        mounts.append(base / "ro")
        save = base / "ro" / "ckpt"
    exp = write_experiment(work, f"savedir-{kind}", {"save": str(save), "save_interval": 2, "train_iters": 4})
    failed(launch(tree, exp), 5, f"save: {save} is a file" if kind == "is-a-file" else
           f"save: cannot write checkpoints to {save}")
    assert not (work / f"savedir-{kind}" / "logs" / "metrics.jsonl").exists(), "refused before any training"


def test_disk_full_during_save_is_one_line_and_keeps_the_last_checkpoint(tree: Path, work: Path, saved: Path,
                                                                         mounts: list[Path]) -> None:
    """A tmpfs with room for one checkpoint and not two: iteration 2 saves, iteration 4 runs out."""
    one = sum(p.stat().st_size for p in (saved / "iter_0000004").iterdir())
    disk = work / "full"
    _mount_tmpfs(disk, f"size={int(one * 1.5) // 4096 * 4096}")
    mounts.append(disk)
    exp = write_experiment(work, "disk-full", {"save": str(disk / "ckpt"), "save_interval": 2, "train_iters": 4})
    failed(launch(tree, exp), 5, "cannot save iteration 4", f"still {disk / 'ckpt' / 'iter_0000002'}")
    assert (disk / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert sorted(p.name for p in (disk / "ckpt").iterdir()) == ["iter_0000002", "latest_checkpointed_iteration.txt"]


# --- data (item 6) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tree: Path, work: Path, corpus: Path, hf_dir: Path) -> Path:
    prefix = work / "data" / "corpus"
    run_in_tree(tree, "-m", "primus_runtime", "preprocess", "--input", str(corpus), "--output-prefix", str(prefix),
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(hf_dir), "--append-eod",
                "--quiet")
    return Path(f"{prefix}_text_document")


def _data_run(work: Path, name: str, prefix: Path, hf_dir: Path, **extra: object) -> Path:
    return write_experiment(work, name, {
        "mock_data": False, "data_path": str(prefix), "split": "90,10,0", "tokenizer_type": "HuggingFaceTokenizer",
        "tokenizer_model": str(hf_dir), "train_iters": 2, "eval_interval": 2, "eval_iters": 1, **extra})


DATA_DAMAGE = {
    "idx-truncated": (lambda p: _truncate(Path(f"{p}.idx"), 40), ".idx: truncated"),
    "bin-truncated": (lambda p: _truncate(Path(f"{p}.bin"), 100), ".bin: truncated"),
    "prefix-missing": (lambda p: [Path(f"{p}.{ext}").unlink() for ext in ("idx", "bin")], "data_path: no dataset at"),
}


@pytest.mark.parametrize("damage", sorted(DATA_DAMAGE))
def test_damaged_data_is_one_line_exit_4_on_every_rank(tree: Path, work: Path, dataset: Path, hf_dir: Path,
                                                       damage: str) -> None:
    folder = work / f"data-{damage}"
    folder.mkdir()
    for ext in ("idx", "bin"):
        shutil.copy2(f"{dataset}.{ext}", folder / f"corpus.{ext}")
    harm, words = DATA_DAMAGE[damage]
    harm(folder / "corpus")
    exp = _data_run(work, f"data-{damage}", folder / "corpus", hf_dir)
    failed(launch(tree, exp), 4, str(folder / "corpus"), words)


def test_truncated_index_cache_is_rebuilt_with_a_warning(tree: Path, work: Path, dataset: Path,
                                                         hf_dir: Path) -> None:
    cache = work / "index-cache"
    exp = _data_run(work, "cached", dataset, hf_dir, data_cache_path=str(cache))
    succeeded(launch(tree, exp))
    shuffle = sorted(cache.glob("*-GPTDataset-train-shuffle_index.npy"))
    assert len(shuffle) == 1, sorted(p.name for p in cache.iterdir())
    whole = shuffle[0].read_bytes()
    _truncate(shuffle[0], len(whole) // 2)  # as a run killed while megatron wrote it leaves it
    results = succeeded(launch(tree, exp))
    assert "removed the damaged" in results[0].stderr and "shuffle_index.npy: truncated" in results[0].stderr
    assert shuffle[0].read_bytes() == whole, "built again, the same order"
    assert sorted(metrics(work / "cached")) == [1, 2]


# --- the dataset helper and one failing rank (item 10) ----------------------------------------

@pytest.fixture
def helperless_tree(tree: Path, tmp_path: Path) -> Path:
    """The trainer tree without ``helpers_cpp``, as a source checkout of megatron-core is."""
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    for helper in (copy / "megatron" / "core" / "datasets").glob("helpers_cpp*"):
        helper.unlink()
    return copy


def test_helper_is_compiled_at_run_time_without_make(helperless_tree: Path, work: Path) -> None:
    """``disable_compile_dependencies: false``: megatron-core has no Makefile for megatron's
    ``compile_helpers``; the runtime compiles the helper itself, and mock data (GPTDataset) trains."""
    exp = write_experiment(work, "compile-helper", {"disable_compile_dependencies": False, "train_iters": 2})
    results = succeeded(launch(helperless_tree, exp))
    assert "dataset helpers: compiled at run time" in results[0].stderr
    assert list((helperless_tree / "megatron" / "core" / "datasets").glob("helpers_cpp*"))
    assert sorted(metrics(work / "compile-helper")) == [1, 2]


def test_one_failing_rank_ends_every_rank_with_its_message(helperless_tree: Path, work: Path) -> None:
    """Rank 1 alone fails (as local rank 0 of a second node without a working compiler) while
    rank 0 compiles and then waits for it at a barrier: both end, rank 0 with rank 1's message and
    exit code, well before any collective timeout."""
    exp = write_experiment(work, "one-rank-fails", {"disable_compile_dependencies": False, "train_iters": 2})
    results = launch(helperless_tree, exp, rank_env={1: {"LOCAL_RANK": "0", "CXX": "false"}})
    rank0, rank1 = failed(results, 4, "compiling", "helpers.cpp failed (false exit 1)")
    assert rank1.startswith("error: compiling ") and rank0.startswith("error: rank 1: compiling ")


# --- preprocess after a kill -9 (item 9) -------------------------------------------------------

def test_preprocess_removes_the_staging_folder_a_killed_run_left(tree: Path, work: Path, corpus: Path,
                                                                 hf_dir: Path) -> None:
    out = work / "after-kill"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = out / f".corpus_text_document.partial-{socket.gethostname()}-{gone.pid}-abc_12"
    stale.mkdir()
    (stale / "corpus_text_document.bin").write_bytes(b"\0" * 4096)
    proc = run_in_tree(tree, "-m", "primus_runtime", "preprocess", "--input", str(corpus), "--output-prefix",
                       str(out / "corpus"), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                       str(hf_dir), "--quiet")
    assert f"removed {stale}, left by an interrupted run" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["corpus_text_document.bin", "corpus_text_document.idx"]
