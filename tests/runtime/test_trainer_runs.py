"""``python -m primus_runtime train`` under torchrun on CPU (gloo, 2 processes, tiny models).

Runs, each checking several things:

- ``reference``: trains 6 steps with every tracker on (TensorBoard, W&B offline, MLflow file
  store) and ``auto_continue_train`` over an empty checkpoint folder (starts fresh); the loss goes down.
- ``crashed``: the same training with the defaults (no tracker files), saving every 2 steps;
  rank 0 exits in the middle of saving iteration 4: iteration 2 stays the complete checkpoint.
- ``resumed``: ``auto_continue_train`` picks up iteration 2; iterations 3-6 have the reference's
  losses exactly; ``disable_last_saving`` leaves no iteration-6 checkpoint; the torch profiler
  writes a trace with CPU events (flag off).
- PP=2 with and without ``pp_warmup``: the same losses and grad norms.
- real data: a corpus preprocessed here trains through GPTDataset, with evaluation.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.runtime.trainer_helpers import make_trainer_tree, metrics, torchrun, write_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tree(cpu_trees: dict[str, Path], helpers_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_trainer_tree(cpu_trees["patched"], tmp_path_factory.mktemp("trainer") / "tree", helpers_dir)


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


def test_reference_run_trains_and_tracks(reference: Path) -> None:
    losses = [m["loss"] for m in metrics(reference).values()]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert _files(reference / "tensorboard", "events.out.tfevents*")
    wandb_runs = _files(reference / "wandb", "offline-run-*")
    assert wandb_runs, "an offline W&B run"
    assert any("team_tester" in p.read_text(errors="ignore") for p in _files(reference / "wandb", "*.yaml")) or \
        any(b"team_tester" in p.read_bytes() for p in _files(reference / "wandb", "*.wandb"))
    assert [p.read_text().strip() for p in _files(reference / "mlflow", "mlflow.runName")] == ["team_tester"]
    # a fresh start (no checkpoint to continue), and no final checkpoint with disable_last_saving
    assert min(metrics(reference)) == 1
    assert not _files(reference / "checkpoints", "iter_*")
    # disable_profiler_activity_cpu on a host without GPUs: nothing to record, no trace
    assert "leaves nothing to record" in (reference / "logs" / "rank_0.log").read_text()
    assert not [p for p in _files(reference / "tensorboard", "*.pt.trace.json*")]
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
    traces = _files(crashed / "tensorboard", "*.pt.trace.json.gz")
    assert traces, "the profiler forces TensorBoard's folder and writes its trace there"
    events = json.loads(gzip.decompress(traces[0].read_bytes()))["traceEvents"]
    assert any(e.get("cat") == "cpu_op" for e in events)


@pytest.mark.parametrize("warmup", [False, True])
def test_pp_warmup_changes_no_loss(tree: Path, work: Path, warmup: bool) -> None:
    name = f"pp_warmup_{warmup}".lower()
    exp = write_experiment(work, name, {"pipeline_model_parallel_size": 2, "train_iters": 3, "global_batch_size": 8,
                                        "pp_warmup": warmup})
    torchrun(tree, exp)
    log = (work / name / "logs" / "rank_0.log").read_text()
    assert ("pp_warmup: one synthetic forward/backward" in log) is warmup
    if warmup:
        plain = metrics(work / "pp_warmup_false")
        assert metrics(work / name).keys() == plain.keys()
        for it, record in metrics(work / name).items():
            assert (record["loss"], record["grad_norm"]) == (plain[it]["loss"], plain[it]["grad_norm"])


def test_trains_on_preprocessed_data(tree: Path, work: Path, corpus: Path, hf_dir: Path) -> None:
    """preprocess -> .bin/.idx -> GPTDataset through BlendedMegatronDatasetBuilder, with eval."""
    from tests.runtime.conftest import run_in_tree

    prefix = work / "data" / "corpus"
    run_in_tree(tree, "-m", "primus_runtime", "preprocess", "--input", str(corpus), "--output-prefix", str(prefix),
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(hf_dir), "--append-eod",
                "--quiet")
    exp = write_experiment(work, "real_data", {
        "mock_data": False, "data_path": f"{prefix}_text_document", "split": "90,10,0",
        "data_cache_path": str(work / "data" / "cache"), "tokenizer_type": "HuggingFaceTokenizer",
        "tokenizer_model": str(hf_dir), "train_iters": 4, "eval_interval": 2, "eval_iters": 1})
    torchrun(tree, exp)
    losses = [m["loss"] for m in metrics(work / "real_data").values()]
    assert len(losses) == 4 and all(loss == loss for loss in losses)  # finite, no NaN
    log = (work / "real_data" / "logs" / "rank_1.log").read_text()
    assert log.count("validation loss at iteration") == 2


def test_tensor_parallel_matches_one_process(tree: Path, work: Path) -> None:
    """TP=2 trains as one process does: the same weights and global batch, split across ranks, so the
    losses agree to rounding."""
    single = write_experiment(work, "tp_single", {"train_iters": 3})
    split = write_experiment(work, "tp2", {"train_iters": 3, "tensor_model_parallel_size": 2})
    torchrun(tree, single, nproc=1)
    torchrun(tree, split)
    one, two = metrics(work / "tp_single"), metrics(work / "tp2")
    assert one.keys() == two.keys() == {1, 2, 3}
    for it in one:
        assert two[it]["loss"] == pytest.approx(one[it]["loss"], rel=1e-4), it


def test_expert_parallel_with_the_distributed_optimizer_trains(tree: Path, work: Path) -> None:
    """EP=2 with the distributed optimizer (tiny Mixtral). Each EP rank initialises its own experts
    from its own seed, so the run is not comparable step by step with one process (tests/cpu does
    that with shared weights); it must train: finite losses that fall."""
    exp = write_experiment(work, "ep2", {"expert_model_parallel_size": 2, "use_distributed_optimizer": True},
                           model="tiny_mixtral.yaml")
    torchrun(tree, exp)
    losses = [m["loss"] for m in metrics(work / "ep2").values()]
    assert len(losses) == 6 and all(loss == loss for loss in losses) and losses[-1] < losses[0]
