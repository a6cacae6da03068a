"""Validation during training: owns ``eval_interval`` and ``eval_iters``.

Every ``eval_interval`` iterations, the mean loss over ``eval_iters`` global batches of the
validation split, continuing where the previous evaluation stopped (``consumed_valid_samples``,
which checkpoints carry).
"""

from __future__ import annotations

from typing import Any

import torch

from primus_runtime.trainer import step
from primus_runtime.trainer.checkpoint import TrainState
from primus_runtime.trainer.config import RunConfig
from primus_runtime.trainer.feed import Feed


class Evaluation:
    def __init__(self, run: RunConfig, feed: Feed, device: torch.device) -> None:
        self.interval, self.iters, self.feed, self.device = run.eval_interval, run.eval_iters, feed, device
        self.seq_length = run.seq_length

    def due(self, iteration: int) -> bool:
        return (self.feed.valid is not None and bool(self.interval) and bool(self.iters)
                and iteration % self.interval == 0)

    def run(self, chunks: list[Any], state: TrainState) -> float | None:
        """The validation loss (on the last pipeline stage; None elsewhere); every rank calls this."""
        batches = self.feed.batches
        valid = self.feed.iterators(self.feed.valid, state.consumed_valid_samples)
        loss = step.evaluate(chunks, valid, batches, self.iters, self.seq_length, self.device)
        state.consumed_valid_samples += self.iters * batches.global_batch
        return loss
