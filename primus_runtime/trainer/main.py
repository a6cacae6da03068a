"""``python -m primus_runtime train --exp <yaml> [--key value ...]``, under torchrun.

Resolves the experiment, checks its flags against the installed megatron-core (and refuses a
cpu-test wheel on a GPU host) before importing megatron.core, then runs :func:`.loop.run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from primus_runtime.config.loader import Experiment, config_root, load_experiment


def checked_experiment(exp_path: Path, overrides: Sequence[str]) -> Experiment:
    from primus_runtime import flags
    from primus_runtime.wheel_info import installed_megatron_core, require_usable

    exp = load_experiment(exp_path, overrides)
    wheel = installed_megatron_core()
    flags.check(exp.params, exp.origins, flags.load_documented(config_root() / "flags.yaml"), wheel)
    import torch

    require_usable(wheel, torch.cuda.is_available())
    return exp


def train(exp_path: Path, overrides: Sequence[str]) -> int:
    exp = checked_experiment(exp_path, overrides)
    from primus_runtime.trainer.loop import run

    return run(exp)
