"""Training with ``enable_primus_turbo`` + ``use_turbo_attention`` through ``primus_runtime train`` (CPU, gloo).

The Turbo attention's torch path is the same function as upstream's DotProductAttention (exact
in real arithmetic; tests/patches checks it per layer to 1e-7), so on one process the losses
agree with the flags-off run to fp32 rounding carried through 3 optimizer steps; TP=2 splits the
same model and batch across two ranks and agrees with one process as the existing TP test
bounds it (1e-4 relative: the split GEMMs and all-reduces sum in another order). The trainer's
log names the attention backend. A bf16 model keeps every parameter in bf16 (Float16Module).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.trainer_helpers import forked_ranks, metrics, write_experiment

pytestmark = [pytest.mark.slow, pytest.mark.training]

TURBO = {"enable_primus_turbo": True, "use_turbo_attention": True, "train_iters": 3}


@pytest.fixture(scope="module")
def tree(trainer_trees: dict[str, Path]) -> Path:
    return trainer_trees["patched"]


def test_turbo_attention_trains_like_upstream_attention_and_under_tensor_parallelism(
        tree: Path, tmp_path: Path) -> None:
    forked_ranks(tree, write_experiment(tmp_path, "off", {"train_iters": 3}), nproc=1)
    one = forked_ranks(tree, write_experiment(tmp_path, "on", TURBO), nproc=1)
    forked_ranks(tree, write_experiment(tmp_path, "on_tp2", {**TURBO, "tensor_model_parallel_size": 2}))
    off, on, tp2 = (metrics(tmp_path / name) for name in ("off", "on", "on_tp2"))
    assert off.keys() == on.keys() == tp2.keys() == {1, 2, 3}
    for it in off:
        assert on[it]["loss"] == pytest.approx(off[it]["loss"], rel=1e-5), it
        assert tp2[it]["loss"] == pytest.approx(on[it]["loss"], rel=1e-4), it
    assert "core attention on the Primus Turbo backend (torch " in one.stderr


def test_a_bf16_model_keeps_every_parameter_in_bf16(tree: Path, tmp_path: Path) -> None:
    """bf16 models are wrapped in Float16Module as Megatron-LM does: norm weights too are bf16 (with
    fp32 norm weights torch's RMSNorm falls back to an unfused fp32 path on the GPU)."""
    proc = forked_ranks(tree, write_experiment(tmp_path, "bf16", {**TURBO, "train_iters": 2, "bf16": True}), nproc=1)
    assert "parameters on this rank (bfloat16)" in proc.stderr
    losses = [m["loss"] for m in metrics(tmp_path / "bf16").values()]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
