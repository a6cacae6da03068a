"""Helpers for the trainer's tests: a megatron tree to train with, an experiment, a launcher.

The trainer tree is a copy of the patched cpu-test tree with megatron's C++ dataset helper
(``helpers_cpp``) compiled into it, as a wheel has it (the source tree does not; GPTDataset,
mock data included, needs it). Its manifest is the build's: the trainer flags are declared by
the patchsets (``implemented_in: runtime``), so the real flag check runs in every test run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.procs import fork_server, free_port
from tests.runtime.conftest import REPO, run_in_tree

EXAMPLE = REPO / "configs" / "examples" / "tiny_llama-cpu.yaml"


def make_trainer_tree(patched: Path, out: Path, helpers_dir: Path) -> Path:
    """A copy of ``patched`` with the session's compiled dataset helper in it, as a wheel has it."""
    shutil.copytree(patched, out)
    for helper in helpers_dir.glob("helpers_cpp*"):
        shutil.copy2(helper, out / "megatron" / "core" / "datasets" / helper.name)
    return out


def write_experiment(folder: Path, name: str, overrides: dict, model: str = "tiny_llama.yaml") -> Path:
    """An experiment like configs/examples/tiny_llama-cpu.yaml, writing under ``folder``."""
    base = {"train_iters": 6, "micro_batch_size": 2, "global_batch_size": 4, "seq_length": 32,
            "max_position_embeddings": 64, "lr": 1.0e-3, "lr_warmup_iters": 1, "lr_decay_style": "cosine",
            "distributed_backend": "gloo", "mock_data": True, "eval_interval": 1000, "eval_iters": 1,
            "num_workers": 0, "seed": 1234}
    doc = {"work_group": "team", "user_name": "tester", "exp_name": name, "workspace": str(folder),
           "modules": {"pre_trainer": {"framework": "megatron", "config": "pre_trainer.yaml", "model": model,
                                       "overrides": {**base, **overrides}}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


#: trackers that are enabled in a test log offline and quietly
TRACKER_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def torchrun(tree: Path, exp: Path, *cli: str, nproc: int = 2, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``train`` under torchrun itself: its agent, its store and a fresh interpreter per rank."""
    return run_in_tree(tree, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                       str(free_port()), "-m", "primus_runtime", "train", "--exp", str(exp), *cli,
                       check=check, env={**TRACKER_ENV, **(env or {})})


def forked_ranks(tree: Path, exp: Path, *cli: str, nproc: int = 2, check: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``train`` as ``nproc`` ranks forked from the tree's fork server (tests/procs.py): what
    torchrun's workers see, seconds faster per run where only the training is under test."""
    return fork_server(tree).run_ranks(nproc, "-m", "primus_runtime", "train", "--exp", str(exp), *cli,
                                       check=check, env={**TRACKER_ENV, **(env or {})})


def metrics(exp_root: Path) -> dict[int, dict]:
    """The last record of each iteration in ``logs/metrics.jsonl`` (a resumed run appends)."""
    found: dict[int, dict] = {}
    path = exp_root / "logs" / "metrics.jsonl"
    for line in path.read_text().splitlines():
        record = json.loads(line)
        found[record["iteration"]] = record
    return found
