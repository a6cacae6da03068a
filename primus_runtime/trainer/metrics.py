"""What a run reports: the iteration line, ``logs/metrics.jsonl`` and the trackers.

Owns ``log_interval`` and ``log_throughput``, and (through :class:`.trackers.Writers`) TensorBoard,
W&B and MLflow. Only the last rank (the one that knows the loss) writes; every rank calls
:meth:`Metrics.iteration`, because the memory figures in the line are a collective.
A context manager: the trackers and the metrics file are closed on every path out of a run.

``metrics.jsonl`` has one record per log line, with the keys ``iteration``, ``consumed``,
``elapsed_ms``, ``lr``, ``loss``, ``grad_norm``, ``tflops``, ``tokens_per_gpu`` (and
``max_allocated_gib`` on a GPU).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

from primus_runtime.trainer import logs, report
from primus_runtime.trainer.checkpoint import TrainState
from primus_runtime.trainer.config import MetricsConfig
from primus_runtime.trainer.options import Batches, Trackers
from primus_runtime.trainer.step import StepResult
from primus_runtime.trainer.trackers import Writers

log = logging.getLogger("primus_runtime.trainer")

_RECORD = ("iteration", "consumed", "elapsed_ms", "lr", "loss", "grad_norm", "tflops", "tokens_per_gpu")


class Metrics:
    def __init__(self, cfg: MetricsConfig, tracking: Trackers, params: Mapping[str, Any], exp_root: Path, *,
                 active: bool, world: int, batches: Batches, seq_length: int, train_iters: int, flops: float,
                 memory: report.MemoryReport) -> None:
        self.cfg, self.active, self.world = cfg, active, world
        self.batches, self.seq_length, self.train_iters, self.flops = batches, seq_length, train_iters, flops
        self.memory = memory
        self.file: IO[str] | None = open(exp_root / "logs" / "metrics.jsonl", "a", encoding="utf-8") if active else None
        try:
            self.writers = Writers(tracking, params, active=active)
        except BaseException:
            if self.file is not None:
                self.file.close()
            raise

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.writers.close()
        finally:
            if self.file is not None:
                self.file.close()
                self.file = None

    def due(self, iteration: int) -> bool:
        return iteration % self.cfg.log_interval == 0

    def iteration(self, state: TrainState, result: StepResult, elapsed: float, optimizer: Any) -> None:
        """The line of one iteration, its metrics record and tracker scalars."""
        gbs, world = self.batches.global_batch, self.world
        fields = {"iteration": state.iteration, "train_iters": self.train_iters,
                  "consumed": state.consumed_train_samples, "elapsed_ms": 1000 * elapsed,
                  "lr": optimizer.param_groups[0]["lr"], "global_batch": gbs, "loss": result.loss,
                  "loss_scale": float(optimizer.get_loss_scale()), "grad_norm": result.grad_norm,
                  "skipped": result.skipped,
                  "tflops": self.flops / (elapsed * world * 1e12) if self.cfg.log_throughput else None,
                  "tokens_per_gpu": gbs * self.seq_length / (elapsed * world), "memory": self.memory.text()}
        if not self.active:
            return
        log.info(report.iteration_line(fields), extra=logs.CONSOLE)
        record = {key: fields[key] for key in _RECORD}
        if torch.cuda.is_available():
            record["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        assert self.file is not None
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.writers.scalars({"lm loss": result.loss, "learning-rate": fields["lr"], "grad-norm": result.grad_norm,
                              "loss-scale": fields["loss_scale"], "throughput/tflops-per-gpu": fields["tflops"]},
                             state.iteration)

    def validation(self, iteration: int, loss: float | None) -> None:
        if self.active:
            log.info(f"validation loss at iteration {iteration} | lm loss value: {loss:.6E}", extra=logs.CONSOLE)
            self.writers.scalars({"lm loss validation": loss}, iteration)
