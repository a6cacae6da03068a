"""A converted checkpoint in ``python -m primus_runtime train`` (forked ranks, gloo): ``load`` + ``finetune``
at TP=1 and at TP=2 train alike from it, and the checkpoint the TP=2 run saves (optimizer and all,
in TP=2 chunks) converts back to Hugging Face tensors of the original names and shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.convert.test_convert import convert, llama_config, make_hf, tensors
from tests.runtime.trainer_helpers import forked_ranks, metrics, write_experiment

pytestmark = pytest.mark.training


def test_train_finetunes_from_a_converted_checkpoint(trainer_trees: dict[str, Path], tmp_path: Path) -> None:
    tree = trainer_trees["patched"]
    hf, _, _ = make_hf(tmp_path, llama_config())
    options = {"train_iters": 2, "lr_warmup_iters": 0, "lr_decay_style": "constant", "seq_length": 16,
               "global_batch_size": 4, "micro_batch_size": 2, "eval_iters": 0}
    exp = write_experiment(tmp_path, "convert", options)
    ckpt = tmp_path / "ckpt"
    convert(tree, "hf-to-mcore", "--hf", str(hf), "--exp", str(exp), "--out", str(ckpt))
    losses = {}
    for tp in (1, 2):
        run = write_experiment(tmp_path, f"tp{tp}", {**options, "load": str(ckpt), "finetune": True,
                                                     "tensor_model_parallel_size": tp,
                                                     "save": str(tmp_path / f"saved-tp{tp}")})
        forked_ranks(tree, run, nproc=tp)
        losses[tp] = [record["loss"] for _, record in sorted(metrics(tmp_path / f"tp{tp}").items())]
    assert losses[1] == pytest.approx(losses[2], rel=1e-5)
    assert losses[1][0] < 7.0  # ~ln(512) from the random HF weights, not a failed load

    back = tmp_path / "back"
    convert(tree, "mcore-to-hf", "--ckpt", str(tmp_path / "saved-tp2"), "--exp", str(exp), "--out", str(back),
            "--tensor_model_parallel_size", "2")
    original, trained = tensors(hf), tensors(back)
    assert {k: v.shape for k, v in original.items()} == {k: v.shape for k, v in trained.items()}
    assert not torch.equal(original["model.layers.0.mlp.down_proj.weight"],
                           trained["model.layers.0.mlp.down_proj.weight"])  # two Adam steps moved it
