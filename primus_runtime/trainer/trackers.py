"""TensorBoard, Weights & Biases and MLflow, on the last rank (the one that knows the loss).

Each is imported only when enabled (:func:`primus_runtime.trainer.options.trackers`): with the
defaults none of them is imported. W&B runs under ``<exp_root>/wandb`` (set ``WANDB_MODE=offline``
where there is no network); MLflow uses ``MLFLOW_TRACKING_URI`` when set, else a file store
under ``<exp_root>/mlflow``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from primus_runtime.trainer.options import Trackers

log = logging.getLogger("primus_runtime.trainer")


class Writers:
    """Scalars to every enabled tracker; a no-op where none is."""

    def __init__(self, settings: Trackers, params: Mapping[str, Any], active: bool) -> None:
        # each package is imported only when its tracker is on, so their types stay unnamed here
        self.tensorboard: Any = None
        self.wandb: Any = None
        self.mlflow: Any = None
        if not active:
            return
        try:
            self._start(settings, params)
        except BaseException:
            self.close()  # the ones already started
            raise

    def _start(self, settings: Trackers, params: Mapping[str, Any]) -> None:
        if settings.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            settings.tensorboard_dir.mkdir(parents=True, exist_ok=True)
            self.tensorboard = SummaryWriter(log_dir=str(settings.tensorboard_dir), max_queue=1000)
            log.info("TensorBoard: %s", settings.tensorboard_dir)
        if settings.wandb is not None:
            import wandb

            if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "offline":
                log.warning("WANDB_API_KEY is not set: W&B may fail to log in (WANDB_MODE=offline runs locally)")
            Path(settings.wandb["dir"]).mkdir(parents=True, exist_ok=True)
            self.wandb = wandb.init(project=settings.wandb["project"], name=settings.wandb["name"],
                                    dir=settings.wandb["dir"], entity=settings.wandb.get("entity"),
                                    config=_plain(params))
            log.info("W&B: project %s, run %s, under %s", settings.wandb["project"], settings.wandb["name"],
                     settings.wandb["dir"])
        if settings.mlflow is not None:
            import mlflow

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # our default: a file store, which MLflow 3 allows only when asked
                uri = Path(settings.mlflow["dir"]).resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            Path(settings.mlflow["dir"]).mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(settings.mlflow["experiment"])
            self.mlflow = mlflow.start_run(run_name=settings.mlflow["run_name"])
            mlflow.log_params({k: str(v)[:500] for k, v in sorted(params.items())})
            log.info("MLflow: experiment %s, run %s, tracking %s", settings.mlflow["experiment"],
                     settings.mlflow["run_name"], uri)

    def scalars(self, values: Mapping[str, float | None], step: int) -> None:
        """Log ``values`` at ``step``; a ``None`` (not known on this rank, or off) is left out."""
        known = {k: float(v) for k, v in values.items() if v is not None}
        if self.tensorboard is not None:
            for key, value in known.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(known, step=step)
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics({k.replace(" ", "_"): v for k, v in known.items()}, step=step)

    def close(self) -> None:
        """Close every tracker that runs, even when closing one of them fails."""
        with contextlib.ExitStack() as closing:
            if self.tensorboard is not None:
                closing.callback(self.tensorboard.close)
            if self.wandb is not None:
                closing.callback(self.wandb.finish)
            if self.mlflow is not None:
                import mlflow

                closing.callback(mlflow.end_run)
        self.tensorboard = self.wandb = self.mlflow = None


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in params.items()}
