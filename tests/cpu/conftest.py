"""Training through ``python -m primus_runtime train`` (gloo) over the session's cpu-test trees.

Each run is a job of forked ranks (``ForkServer.run_ranks`` of tests/procs.py): the environment
torchrun gives its workers, without a fresh interpreter per rank, which on CI's 2 cores would cost
most of a short run re-importing torch and megatron. The reference, crash and resume runs of
tests/runtime/test_trainer_runs.py keep torchrun itself.

The trees are ``trainer_trees`` of tests/conftest.py, ``upstream`` (no patches) and ``patched``
(the newest patchset version), both in the cpu-test flavor, each with megatron's compiled dataset
helper, as a wheel has it. A run is an experiment
on one of the shipped tiny models (``MODELS``) with mock data; what it reports is what the
trainer writes: the losses and gradient norms of ``logs/metrics.jsonl`` and the layers' MLP and
experts classes of the model summary in ``logs/rank_0.log``. Runs are cached per session: several
tests read the same run.

Megatron initialises pipeline stages and expert-parallel ranks from their own seeds, so a PP=2
or EP=2 model starts from other weights than one process. To compare layouts, ``from_start``
runs first train one step in one process and save it (``save``), then every layout loads that
checkpoint with ``finetune`` (the model's weights only, resharded by dist_checkpointing; a
fresh optimizer and iteration 0): all start from the same weights and see the same batches.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.procs import fork_server
from tests.runtime.trainer_helpers import metrics, write_experiment

MODELS = {"dense": "tiny_llama.yaml", "moe": "tiny_mixtral.yaml", "deepseek": "tiny_deepseek_v2.yaml"}
#: 5 steps of Adam at a constant learning rate, 8 sequences of 16 tokens per step, 2 per microbatch
BASE = {"train_iters": 5, "micro_batch_size": 2, "global_batch_size": 8, "seq_length": 16, "lr": 3.0e-3,
        "lr_warmup_iters": 0, "lr_decay_style": "constant", "weight_decay": 0.0, "eval_iters": 0}
_MLP_LINE = re.compile(r"model layers' MLP: (.*)$", re.MULTILINE)
_EXPERTS_LINE = re.compile(r"model layers' experts: (.*)$", re.MULTILINE)


class Trainer:
    """Runs ``primus_runtime train`` as forked ranks against a tree; remembers every run of the session."""

    def __init__(self, trees: dict[str, Path], workdir: Path) -> None:
        self.trees, self.workdir = trees, workdir
        self.runs: dict[str, dict[str, Any]] = {}
        self.starts: dict[str, Path] = {}

    def __call__(self, tree: str, nproc: int = 1, tag: str = "", model: str = "dense", tp: int = 1, pp: int = 1,
                 ep: int = 1, steps: int = 5, overrides: dict[str, Any] | None = None,
                 from_start: bool = False, start_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """One run; ``start_overrides`` (default: ``overrides``) are those of the common start's
        one-process run, for overrides that only a parallel layout takes."""
        options = {**BASE, "train_iters": steps, "tensor_model_parallel_size": tp,
                   "pipeline_model_parallel_size": pp, "expert_model_parallel_size": ep, **(overrides or {})}
        if from_start:
            start = overrides if start_overrides is None else start_overrides
            options.update(load=str(self.start(tree, model, start or {})), finetune=True)
        key = json.dumps([tree, nproc, tag, model, options], sort_keys=True)
        if key not in self.runs:
            self.runs[key] = self._train(tree, nproc, model, options)
        return self.runs[key]

    def start(self, tree: str, model: str, overrides: dict[str, Any]) -> Path:
        """A checkpoint of one step in one process, the common starting point of ``from_start`` runs."""
        key = json.dumps([tree, model, overrides], sort_keys=True)
        if key not in self.starts:
            folder = self.workdir / f"start-{len(self.starts)}"
            result = self._train(tree, 1, model, {**BASE, "train_iters": 1, **overrides, "save": str(folder),
                                                  "no_save_optim": True, "no_save_rng": True})
            assert "losses" in result, result.get("stderr")
            self.starts[key] = folder
        return self.starts[key]

    def _train(self, tree: str, nproc: int, model: str, options: dict[str, Any]) -> dict[str, Any]:
        name = f"run-{len(self.runs) + len(self.starts)}"
        exp = write_experiment(self.workdir, name, options, model=MODELS[model])
        proc = fork_server(self.trees[tree]).run_ranks(nproc, "-m", "primus_runtime", "train", "--exp", str(exp),
                                                       cwd=self.workdir, check=False)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "Error" in line or line.startswith("error: ")]
            return {"failed": True, "errors": errors, "stderr": proc.stderr[-4000:]}
        records = metrics(self.workdir / name)
        log = (self.workdir / name / "logs" / "rank_0.log").read_text()
        mlps, experts = _MLP_LINE.search(log), _EXPERTS_LINE.search(log)
        return {"losses": [records[i]["loss"] for i in sorted(records)],
                "grad_norms": [records[i]["grad_norm"] for i in sorted(records)], "world": nproc,
                "mlp_classes": mlps.group(1).split(", ") if mlps else [],
                "expert_classes": experts.group(1).split(", ") if experts else [], "exp_root": self.workdir / name}



@pytest.fixture(scope="session")
def train(trainer_trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    return Trainer(trainer_trees, tmp_path_factory.mktemp("runs"))
