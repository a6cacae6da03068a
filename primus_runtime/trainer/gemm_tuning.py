"""Primus's three-stage GEMM tuning (``PRIMUS_HIPBLASLT_TUNING_STAGE``) through PyTorch's TunableOp.

Primus tunes hipBLASLt in three runs of the same training command. PyTorch's TunableOp does the
same for every GEMM torch dispatches, with hipBLASLt/rocBLAS on ROCm and cuBLASLt/cuBLAS on CUDA,
so the stages keep Primus's variable and meaning:

``0`` (default)
    no tuning: torch's default GEMM choice.
``1`` dump shapes
    train as usual and record every GEMM shape TunableOp sees, per rank, into
    ``<workspace>/tune_hipblaslt/<model>/gemm_shape/untuned<rank>-gpu<device>.csv`` (a few
    iterations are enough: the shapes repeat every iteration). TunableOp always puts the device
    ordinal into this file's name, so the name carries both.
``2`` tune
    no training: each rank benchmarks the candidate kernels for the shapes it recorded and writes
    the fastest to ``.../gemm_tune/tuned<rank>.csv``.
``3`` train with the tuned results
    TunableOp reads ``tuned<rank>.csv`` and uses the recorded choice for each shape (no tuning
    during training).

On a host without a GPU TunableOp has nothing to tune: a stage other than 0 is reported and
ignored. A stage-3 run without the stage-2 file stops before training, naming the missing file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from primus_runtime.errors import ConfigError

if TYPE_CHECKING:
    from primus_runtime.config.loader import Experiment

ENV = "PRIMUS_HIPBLASLT_TUNING_STAGE"
STAGES = {0: "off", 1: "dump GEMM shapes", 2: "tune GEMM kernels", 3: "train with tuned GEMM kernels"}


@dataclass(frozen=True)
class Tuning:
    """The stage in force and where this rank's TunableOp files live."""

    stage: int
    untuned: Path
    tuned: Path
    device: int = 0

    @property
    def untuned_template(self) -> str:
        """The untuned file's name as handed to TunableOp, which inserts the device ordinal before
        the suffix itself (torch 2.11 on an H200 wrote ``untuned0.csv`` as ``untuned00.csv`` and a
        ``%d`` literally), so the name it gets ends in ``-gpu.csv``."""
        return str(self.untuned).replace(f"-gpu{self.device}.csv", "-gpu.csv")

    @property
    def trains(self) -> bool:
        """Stage 2 only tunes; every other stage trains."""
        return self.stage != 2


def from_environment(env: Mapping[str, str], workspace: Path, model: str, rank: int, device: int = 0) -> Tuning:
    """The stage of ``PRIMUS_HIPBLASLT_TUNING_STAGE`` (unset: 0) and the file paths of this rank on
    GPU ``device``."""
    text = env.get(ENV, "0").strip() or "0"
    if text not in {str(s) for s in STAGES}:
        raise ConfigError(f"{ENV}={text!r}: choose 0 (off), 1 (dump shapes), 2 (tune) or 3 (train tuned)")
    root = workspace / "tune_hipblaslt" / model
    return Tuning(int(text), root / "gemm_shape" / f"untuned{rank}-gpu{device}.csv",
                  root / "gemm_tune" / f"tuned{rank}.csv", device)


def start(tuning: Tuning) -> str | None:
    """Configure TunableOp for ``tuning`` before the first GEMM; the log line to print, if any."""
    if tuning.stage == 0:
        return None
    if not torch.cuda.is_available():
        return f"{ENV}={tuning.stage}: no GPU on this host, TunableOp has nothing to tune; ignored"
    tunable = torch.cuda.tunable
    if tuning.stage == 1:
        tuning.untuned.parent.mkdir(parents=True, exist_ok=True)
        # TunableOp reads the untuned file's name from the environment when it first records
        os.environ["PYTORCH_TUNABLEOP_UNTUNED_FILENAME"] = tuning.untuned_template
        tunable.enable(True)
        tunable.tuning_enable(False)
        tunable.record_untuned_enable(True)
        return f"{ENV}=1 ({STAGES[1]}): recording GEMM shapes into {tuning.untuned}"
    if tuning.stage == 3:
        if not tuning.tuned.is_file():
            raise ConfigError(f"{ENV}=3: {tuning.tuned} does not exist; run stage 1 (dump shapes) and "
                              "stage 2 (tune) with this experiment first")
        tunable.enable(True)
        tunable.tuning_enable(False)
        tunable.record_untuned_enable(False)
        tunable.set_filename(str(tuning.tuned))
        if not tunable.read_file(str(tuning.tuned)):
            raise ConfigError(f"{ENV}=3: TunableOp could not read {tuning.tuned}; rerun stage 2")
        return f"{ENV}=3 ({STAGES[3]}): GEMM choices from {tuning.tuned}"
    return None


def tune(tuning: Tuning) -> str:
    """Stage 2: benchmark the candidates for every shape recorded in stage 1; write the fastest."""
    if not torch.cuda.is_available():
        return f"{ENV}=2: no GPU on this host, nothing tuned"
    if not tuning.untuned.is_file():
        raise ConfigError(f"{ENV}=2: {tuning.untuned} does not exist; run stage 1 (dump shapes) with this "
                          "experiment first")
    tuning.tuned.parent.mkdir(parents=True, exist_ok=True)
    tunable = torch.cuda.tunable
    tunable.enable(True)
    tunable.tuning_enable(True)
    tunable.record_untuned_enable(False)
    tunable.set_filename(str(tuning.tuned))
    tunable.tune_gemm_in_file(str(tuning.untuned))
    # TunableOp writes its results file (set_filename) itself when the process exits
    return f"{ENV}=2 ({STAGES[2]}): {len(tunable.get_results())} GEMM choices, written to {tuning.tuned} at exit"


def prepare(exp: Experiment, rank: int, log: logging.Logger) -> bool:
    """Apply the stage for this rank before its first GEMM; False when stage 2 tuned instead of training."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else 0
    tuning = from_environment(os.environ, Path(exp.workspace), exp.model_config.stem, rank, device)
    if not tuning.trains:
        log.info(tune(tuning))
        return False
    note = start(tuning)
    if note:
        log.info(note)
    return True
