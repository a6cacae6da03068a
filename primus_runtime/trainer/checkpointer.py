"""The checkpointing part of a run: owns ``save``/``load``/``save_interval``, ``finetune``, the
``no_{save,load}_{optim,rng}`` switches, ``auto_continue_train`` (spec M4) and
``disable_last_saving`` (spec M5).

It decides *when* to save and *where from* to resume; *how* is :mod:`.checkpoint`'s
(megatron's dist_checkpointing, atomic on disk), whose public functions it calls as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from primus_runtime.trainer import checkpoint
from primus_runtime.trainer.checkpoint import TrainState
from primus_runtime.trainer.config import CheckpointConfig
from primus_runtime.trainer.options import Identity, checkpointing, should_save

log = logging.getLogger("primus_runtime.trainer")


class Checkpointer:
    """Resume at the start, save at the interval and at the end of a run of ``train_iters``."""

    def __init__(self, cfg: CheckpointConfig, who: Identity, params: Mapping[str, Any], train_iters: int) -> None:
        self.settings = checkpointing(cfg, who)
        checkpoint.check_save_dir(self.settings)  # an unusable save folder stops the run before training
        self.notes = self.settings.notes
        self.params, self.train_iters = params, train_iters
        self.saved_at: int | None = None

    def load(self, chunks: list[Any], optimizer: Any, scheduler: Any) -> TrainState:
        return checkpoint.load(self.settings, chunks, optimizer, scheduler, self.params)

    def after_step(self, state: TrainState, chunks: list[Any], optimizer: Any, scheduler: Any) -> None:
        """The interval save (every rank calls this after each iteration)."""
        if should_save(self.settings, state.iteration, self.train_iters, final=False):
            self._save(state, chunks, optimizer, scheduler)

    def finish(self, state: TrainState, chunks: list[Any], optimizer: Any, scheduler: Any) -> None:
        """The last save, unless the interval just made it or ``disable_last_saving`` forbids it."""
        if self.saved_at != state.iteration and should_save(self.settings, state.iteration, self.train_iters,
                                                            final=True):
            self._save(state, chunks, optimizer, scheduler)
        elif self.settings.save is not None and self.settings.disable_last_saving:
            log.info("disable_last_saving: no checkpoint of the last iteration (%d)", state.iteration)

    def _save(self, state: TrainState, chunks: list[Any], optimizer: Any, scheduler: Any) -> None:
        checkpoint.save(self.settings, state.iteration, state, chunks, optimizer, scheduler, self.params)
        self.saved_at = state.iteration
