"""A run that fails in the middle of training still closes what it opened.

One process (gloo) trains the tiny Llama with TensorBoard and MLflow on; the third training step
raises. Afterwards, in the same interpreter: the error reached the caller, the process group is
destroyed, the trackers and the metrics file are closed, and the log handlers are gone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runtime.conftest import run_in_tree
from tests.runtime.trainer_helpers import free_port, make_trainer_tree, metrics, write_experiment

pytestmark = pytest.mark.slow

SCRIPT = """
import json, logging, sys
from pathlib import Path

import mlflow
import torch

from primus_runtime.trainer import loop, metrics, step
from primus_runtime.trainer.main import checked_experiment

opened = []
real_init, real_step = metrics.Metrics.__init__, step.train_step


def remember(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    opened.append(self)


def fail_third(*args, **kwargs):
    fail_third.calls += 1
    if fail_third.calls == 3:
        raise RuntimeError("injected failure in the third step")
    return real_step(*args, **kwargs)


fail_third.calls = 0
metrics.Metrics.__init__, step.train_step = remember, fail_third
try:
    loop.run(checked_experiment(Path(sys.argv[1]), []))
except RuntimeError as exc:
    error = str(exc)
else:
    error = None
(reported,) = opened
print(json.dumps({
    "error": error,
    "process_group": torch.distributed.is_initialized(),
    "metrics_file": reported.file is not None,
    "trackers": [w is not None for w in (reported.writers.tensorboard, reported.writers.mlflow)],
    "mlflow_run": mlflow.active_run() is not None,
    "log_handlers": len(logging.getLogger("primus_runtime").handlers),
}))
"""


def test_an_error_mid_training_closes_everything(cpu_trees: dict[str, Path], helpers_dir: Path,
                                                 tmp_path: Path) -> None:
    tree = make_trainer_tree(cpu_trees["patched"], tmp_path / "tree", helpers_dir)
    exp = write_experiment(tmp_path, "failing", {"disable_tensorboard": False, "disable_mlflow": False})
    script = tmp_path / "fail.py"
    script.write_text(SCRIPT)
    proc = run_in_tree(tree, str(script), str(exp), env={"MASTER_PORT": str(free_port())})
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == {"error": "injected failure in the third step", "process_group": False, "metrics_file": False,
                     "trackers": [False, False], "mlflow_run": False, "log_handlers": 0}
    assert sorted(metrics(tmp_path / "failing")) == [1, 2]  # what was trained before the error is recorded
    assert list((tmp_path / "failing" / "tensorboard").glob("events.out.tfevents*"))
