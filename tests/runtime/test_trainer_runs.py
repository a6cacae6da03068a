"""``python -m primus_runtime train`` on CPU (gloo, 2 processes, tiny models).

The reference, crashed and resumed runs go through torchrun itself (its agent, its store, a fresh
interpreter per rank: the launcher users run); the others fork their ranks (``forked_ranks``),
which saves the ranks' imports on CI's two cores.

Runs, each checking several things:

- ``reference``: trains 6 steps with every tracker on (TensorBoard, W&B offline, MLflow file
  store) and ``auto_continue_train`` over an empty checkpoint folder (starts fresh); the loss goes down.
- ``crashed``: the same training with the defaults (no tracker files), saving every 2 steps;
  rank 0 exits in the middle of saving iteration 4: iteration 2 stays the complete checkpoint.
- ``resumed``: ``auto_continue_train`` picks up iteration 2; iterations 3-6 have the reference's
  losses exactly; ``disable_last_saving`` leaves no iteration-6 checkpoint; the torch profiler
  writes a trace with CPU events (``disable_profiler_activity_cpu`` off; the reference has it on).
- PP=2 with and without ``pp_warmup``: the same losses and grad norms.
- real data: a corpus preprocessed here trains through GPTDataset, with evaluation, as one
  process does on the same global batches.
- EP=2 with the distributed optimizer: the losses of EP=2 with the plain optimizer.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.runtime.trainer_helpers import forked_ranks, metrics, torchrun, write_experiment

pytestmark = pytest.mark.training  # multi-process runs (tests/conftest.py adds slow)


@pytest.fixture(scope="module")
def tree(trainer_trees: dict[str, Path]) -> Path:
    return trainer_trees["patched"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(tree: Path, work: Path) -> Path:
    exp = write_experiment(work, "reference", {
        "disable_tensorboard": False, "disable_wandb": False, "disable_mlflow": False,
        "auto_continue_train": True, "disable_last_saving": True,
        "profile": True, "use_pytorch_profiler": True, "profile_step_start": 1, "profile_step_end": 3,
        "disable_profiler_activity_cpu": True})
    proc = torchrun(tree, exp)
    assert "auto_continue_train: no checkpoint in" in proc.stderr
    return work / "reference"


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern)) if root.exists() else []


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header (``:W&B``, magic 0xBEE1,
    version 0), then LevelDB-log blocks of 32 KiB whose chunks (a 7-byte header: crc32c, length,
    type 1 full / 2 first / 3 middle / 4 last) join into serialized ``Record`` protobufs."""
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield pending
            pending = b""


def wandb_run_names(run_dir: Path) -> list[tuple[str, str]]:
    """(project, display name) of every run record in the offline run's ``run-<id>.wandb``."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("run-*.wandb")
    found = []
    for data in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "run":
            found.append((record.run.project, record.run.display_name))
    return found


def trace_events(root: Path) -> list[dict] | None:
    """The events of the one torch profiler trace under ``root``, or None without a trace."""
    traces = _files(root, "*.pt.trace.json*")
    if not traces:
        return None
    assert len(traces) == 1, traces
    raw = traces[0].read_bytes()
    return json.loads(gzip.decompress(raw) if traces[0].suffix == ".gz" else raw)["traceEvents"]


def test_reference_run_trains_and_tracks(reference: Path) -> None:
    losses = [m["loss"] for m in metrics(reference).values()]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert _files(reference / "tensorboard", "events.out.tfevents*")
    wandb_runs = [p for p in _files(reference / "wandb", "offline-run-*") if p.is_dir()]
    assert len(wandb_runs) == 1, "one offline W&B run, rank 0's"
    # project <work_group>_<user_name>, run name the experiment's, as the run file records them
    assert wandb_run_names(wandb_runs[0]) == [("team_tester", "reference")]
    assert [p.read_text().strip() for p in _files(reference / "mlflow", "mlflow.runName")] == ["team_tester"]
    # a fresh start (no checkpoint to continue), and no final checkpoint with disable_last_saving
    assert min(metrics(reference)) == 1
    assert not _files(reference / "checkpoints", "iter_*")
    # disable_profiler_activity_cpu: a trace with device events only; on a host without GPUs
    # that is nothing, so no profiler and no trace (the resumed run, flag off, has CPU events)
    events = trace_events(reference / "tensorboard")
    if torch.cuda.is_available():
        assert events and not [e for e in events if e.get("cat") == "cpu_op"]
        assert [e for e in events if e.get("cat") == "kernel"]
    else:
        assert "leaves nothing to record" in (reference / "logs" / "rank_0.log").read_text()
        assert events is None
    log0 = (reference / "logs" / "rank_0.log").read_text()
    assert "[DEBUG]" in log0 and "iteration " in (reference / "logs" / "rank_1.log").read_text()


@pytest.fixture(scope="module")
def crashed(tree: Path, work: Path) -> Path:
    exp = write_experiment(work, "crashed", {"save": str(work / "ckpt"), "save_interval": 2})
    proc = torchrun(tree, exp, check=False, env={"PRIMUS_TRAINER_TEST_CRASH_IN_SAVE": "4"})
    assert proc.returncode != 0
    return work / "crashed"


def test_crash_during_save_leaves_the_previous_checkpoint(crashed: Path, work: Path) -> None:
    ckpt = work / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("iter_")) == ["iter_0000002"]
    assert (ckpt / ".iter_0000004.partial").is_dir()  # the interrupted save, never read
    for tracker in ("tensorboard", "wandb", "mlflow"):
        assert not (crashed / tracker).exists()


def test_resume_after_crash_matches_uninterrupted_run(tree: Path, work: Path, crashed: Path,
                                                      reference: Path) -> None:
    exp = write_experiment(work, "crashed", {
        "save": str(work / "ckpt"), "save_interval": 2, "auto_continue_train": True, "disable_last_saving": True,
        "profile": True, "use_pytorch_profiler": True, "profile_step_start": 1, "profile_step_end": 2})
    torchrun(tree, exp)
    resumed, expected = metrics(crashed), metrics(reference)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for it in (3, 4, 5, 6):
        assert resumed[it]["loss"] == expected[it]["loss"], it
        assert resumed[it]["lr"] == expected[it]["lr"] and resumed[it]["grad_norm"] == expected[it]["grad_norm"]
    assert "resumed from" in (crashed / "logs" / "rank_0.log").read_text()
    ckpt = work / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("iter_")) == ["iter_0000002", "iter_0000004"]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    assert not (ckpt / ".iter_0000004.partial").exists()
    events = trace_events(crashed / "tensorboard")
    assert events, "the profiler forces TensorBoard's folder and writes its trace there"
    assert any(e.get("cat") == "cpu_op" for e in events)  # disable_profiler_activity_cpu off


@pytest.fixture(scope="module")
def pp_runs(tree: Path, work: Path) -> Callable[[bool], Path]:
    """PP=2 runs with and without ``pp_warmup``, each trained on first use."""
    done: dict[bool, Path] = {}

    def run(warmup: bool) -> Path:
        if warmup not in done:
            name = f"pp_warmup_{warmup}".lower()
            forked_ranks(tree, write_experiment(work, name, {"pipeline_model_parallel_size": 2, "train_iters": 3,
                                                         "global_batch_size": 8, "pp_warmup": warmup}))
            done[warmup] = work / name
        return done[warmup]

    return run


@pytest.mark.parametrize("warmup", [False, True])
def test_pp_warmup_changes_no_loss(pp_runs: Callable[[bool], Path], warmup: bool) -> None:
    """Each run logs whether it warmed up, and has the other run's losses and grad norms exactly."""
    run, other = pp_runs(warmup), pp_runs(not warmup)
    log = (run / "logs" / "rank_0.log").read_text()
    assert ("pp_warmup: one synthetic forward/backward" in log) is warmup
    got, want = metrics(run), metrics(other)
    assert got.keys() == want.keys() == {1, 2, 3}
    for it, record in got.items():
        assert (record["loss"], record["grad_norm"]) == (want[it]["loss"], want[it]["grad_norm"]), it


def test_trains_on_preprocessed_data(tree: Path, work: Path, corpus: Path, hf_dir: Path) -> None:
    """preprocess -> .bin/.idx -> GPTDataset through BlendedMegatronDatasetBuilder, with eval."""
    from tests.runtime.conftest import run_in_tree

    prefix = work / "data" / "corpus"
    run_in_tree(tree, "-m", "primus_runtime", "preprocess", "--input", str(corpus), "--output-prefix", str(prefix),
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(hf_dir), "--append-eod",
                "--quiet")
    options = {"mock_data": False, "data_path": f"{prefix}_text_document", "split": "90,10,0",
               "data_cache_path": str(work / "data" / "cache"), "tokenizer_type": "HuggingFaceTokenizer",
               "tokenizer_model": str(hf_dir), "train_iters": 4, "eval_interval": 2, "eval_iters": 1}
    forked_ranks(tree, write_experiment(work, "real_data", options))
    forked_ranks(tree, write_experiment(work, "real_data_single", options), nproc=1)
    two, one = metrics(work / "real_data"), metrics(work / "real_data_single")
    # DP=2 reads the same global batches as one process: the same losses, to reduction rounding
    assert two.keys() == one.keys() == {1, 2, 3, 4}
    for it in one:
        assert math.isfinite(two[it]["loss"]) and two[it]["loss"] == pytest.approx(one[it]["loss"], rel=1e-4), it
    log = (work / "real_data" / "logs" / "rank_1.log").read_text()
    assert log.count("validation loss at iteration") == 2


def test_tensor_parallel_matches_one_process(tree: Path, work: Path) -> None:
    """TP=2 trains as one process does: the same weights and global batch, split across ranks, so the
    losses agree to rounding."""
    single = write_experiment(work, "tp_single", {"train_iters": 3})
    split = write_experiment(work, "tp2", {"train_iters": 3, "tensor_model_parallel_size": 2})
    forked_ranks(tree, single, nproc=1)
    forked_ranks(tree, split)
    one, two = metrics(work / "tp_single"), metrics(work / "tp2")
    assert one.keys() == two.keys() == {1, 2, 3}
    for it in one:
        assert two[it]["loss"] == pytest.approx(one[it]["loss"], rel=1e-4), it


def test_expert_parallel_with_the_distributed_optimizer_trains(tree: Path, work: Path) -> None:
    """EP=2 with the distributed optimizer (tiny Mixtral) trains as EP=2 with the plain optimizer:
    the same losses to rounding (sharding the optimizer state changes no update), and they fall.
    Each EP rank initialises its own experts from its own seed, so EP=2 is not compared step by
    step with one process here (tests/cpu does that with shared weights)."""
    for name, distributed in (("ep2", True), ("ep2_plain", False)):
        exp = write_experiment(work, name, {"expert_model_parallel_size": 2, "use_distributed_optimizer": distributed},
                               model="tiny_mixtral.yaml")
        forked_ranks(tree, exp)
    sharded, plain = metrics(work / "ep2"), metrics(work / "ep2_plain")
    assert sharded.keys() == plain.keys() == {1, 2, 3, 4, 5, 6}
    for it in plain:
        assert sharded[it]["loss"] == pytest.approx(plain[it]["loss"], rel=1e-4), it
    assert sharded[6]["loss"] < sharded[1]["loss"]
