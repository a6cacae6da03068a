"""Save and resume with megatron.core's dist_checkpointing, atomically on disk.

Layout (Megatron-LM's): ``<save>/iter_0000042/`` and ``<save>/latest_checkpointed_iteration.txt``
holding the newest complete iteration. Sharded: the model chunks (``model`` or ``model0..N``
with virtual pipeline stages), the optimizer, and each rank's RNG states; common (rank 0):
the iteration, consumed samples, the learning-rate scheduler and the run's params.

A save writes into ``<save>/.iter_0000042.partial``, and only when every rank has finished does
rank 0 rename it to ``iter_0000042`` and then replace the tracker file (write a temporary file,
``os.replace``). A run killed during a save therefore leaves at most a ``.partial`` folder,
which nothing reads and the next save of that iteration removes; the tracker always names a
complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from primus_runtime.errors import PrimusRuntimeError
from primus_runtime.trainer.options import TRACKER_FILE, Checkpointing
from primus_runtime.trainer.rng import capture as _rng_state
from primus_runtime.trainer.rng import restore as _set_rng_state

log = logging.getLogger("primus_runtime.trainer")

CHECKPOINT_VERSION = 1
#: test hook: rank 0 exits (status 17) after writing this iteration's shards, before the rename
CRASH_IN_SAVE_ENV = "PRIMUS_TRAINER_TEST_CRASH_IN_SAVE"


class CheckpointError(PrimusRuntimeError):
    exit_code = 5


def iteration_dir(root: Path, iteration: int) -> Path:
    return root / f"iter_{iteration:07d}"


def read_tracker(root: Path) -> int | None:
    """The newest complete iteration under ``root``, or None when there is none."""
    tracker = root / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text(encoding="utf-8").strip()
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text!r}") from None


def _write_tracker(root: Path, iteration: int) -> None:
    temporary = root / f".{TRACKER_FILE}.tmp"
    with open(temporary, "w", encoding="utf-8") as fh:
        fh.write(f"{iteration}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, root / TRACKER_FILE)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class TrainState:
    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0


def _metadata(params: Mapping[str, Any]) -> dict[str, Any]:
    from megatron.core import parallel_state

    meta: dict[str, Any] = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True,
                            "dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}
    if params.get("use_distributed_optimizer"):
        meta["distrib_optim_sharding_type"] = "dp_reshardable"  # Megatron-LM's default: reshards over DP only
    return meta


def _model_keys(chunks: list[Any]) -> list[str]:
    return ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]


def _rng_sharded(data: Any) -> Any:
    """One RNG record per rank: resuming needs the same world size (or ``no_load_rng``)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject("rng_state", data, (torch.distributed.get_world_size(),),
                         (torch.distributed.get_rank(),), replica_id=0)


def _state_dict(chunks: list[Any], optimizer: Any, params: Mapping[str, Any], *, with_optim: bool,
                with_rng: bool, loading: bool) -> dict[str, Any]:
    meta = _metadata(params)
    state: dict[str, Any] = {}
    for key, chunk in zip(_model_keys(chunks), chunks):
        state[key] = chunk.module.sharded_state_dict(metadata=meta)  # the GPTModel's keys, not DDP's
    if with_optim:
        # the optimizer finds each parameter's sharding by walking the (nested) model state
        model_sd = {k: v for k, v in state.items() if k.startswith("model")}
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=loading, metadata=meta)
    if with_rng:
        state["rng_state"] = _rng_sharded(None if loading else _rng_state())
    return state


def save(ckpt: Checkpointing, iteration: int, train: TrainState, chunks: list[Any], optimizer: Any,
         scheduler: Any, params: Mapping[str, Any]) -> Path:
    """Write ``iter_<iteration>`` under ``ckpt.save``, then point the tracker at it; every rank calls this."""
    from megatron.core import dist_checkpointing

    assert ckpt.save is not None
    root, rank = ckpt.save, torch.distributed.get_rank()
    final = iteration_dir(root, iteration)
    partial = root / f".{final.name}.partial"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    torch.distributed.barrier()
    state = _state_dict(chunks, optimizer, params, with_optim=not ckpt.no_save_optim,
                        with_rng=not ckpt.no_save_rng, loading=False)
    state.update(checkpoint_version=CHECKPOINT_VERSION, iteration=iteration,
                 consumed_train_samples=train.consumed_train_samples,
                 consumed_valid_samples=train.consumed_valid_samples,
                 scheduler=scheduler.state_dict(), params=dict(params))
    dist_checkpointing.save(state, str(partial), validate_access_integrity=True)
    if rank == 0 and os.environ.get(CRASH_IN_SAVE_ENV) == str(iteration):
        log.error("test hook %s: exiting in the middle of saving iteration %d", CRASH_IN_SAVE_ENV, iteration)
        import psutil

        for child in psutil.Process().children(recursive=True):  # megatron's writer's helper processes
            child.kill()
        os._exit(17)
    torch.distributed.barrier()
    if rank == 0:
        old = root / f".{final.name}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(partial, final)
        _fsync_dir(root)
        _write_tracker(root, iteration)
        shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()
    log.info("saved checkpoint of iteration %d to %s", iteration, final)
    return final


def load(ckpt: Checkpointing, chunks: list[Any], optimizer: Any, scheduler: Any,
         params: Mapping[str, Any]) -> TrainState:
    """Restore from ``ckpt.load`` (its tracker's iteration); a fresh state when there is nothing to load."""
    from megatron.core import dist_checkpointing

    if ckpt.load is None:
        return TrainState()
    iteration = read_tracker(ckpt.load)
    if iteration is None:
        log.warning("no checkpoint in %s (no %s): starting from scratch", ckpt.load, TRACKER_FILE)
        return TrainState()
    folder = iteration_dir(ckpt.load, iteration)
    if not folder.is_dir():
        raise CheckpointError(f"{ckpt.load / TRACKER_FILE} names iteration {iteration}, but {folder} is missing")
    common = dist_checkpointing.load_common_state_dict(str(folder))
    with_optim = not (ckpt.finetune or ckpt.no_load_optim)
    with_rng = not (ckpt.finetune or ckpt.no_load_rng)
    if with_optim:
        _init_optimizer_state(optimizer)
    state = _state_dict(chunks, optimizer, params, with_optim=with_optim, with_rng=with_rng, loading=True)
    try:
        loaded = dist_checkpointing.load(state, str(folder))
    except Exception as exc:  # dist_checkpointing raises several kinds; say which checkpoint and what to try
        raise CheckpointError(f"cannot load {folder}: {exc} (a different parallel layout needs no_load_rng; "
                              f"a different model cannot be loaded)") from exc
    with torch.no_grad():  # the distributed optimizer copies into views of fp32 parameters
        for key, chunk in zip(_model_keys(chunks), chunks):
            chunk.module.load_state_dict(loaded[key])
        if with_optim:
            optimizer.load_state_dict(loaded["optimizer"])
    if with_optim:
        scheduler.load_state_dict(common["scheduler"])
    if with_rng:
        _set_rng_state(loaded["rng_state"])
    if ckpt.finetune:
        log.info("finetune: loaded the model of iteration %d from %s; iteration and samples start at 0",
                 iteration, folder)
        return TrainState()
    log.info("resumed from %s: iteration %d, %d samples consumed", folder, iteration,
             common["consumed_train_samples"])
    return TrainState(iteration, int(common["consumed_train_samples"]), int(common["consumed_valid_samples"]))



def _init_optimizer_state(optimizer: Any) -> None:
    """Give a not-yet-stepped optimizer the state that loading will overwrite.

    The distributed optimizer describes its state from the inner optimizer's, and with
    PyTorch's own Adam (no TransformerEngine/Apex, e.g. on CPU) it reads each parameter's
    ``step``, which exists only after a first step; megatron.core initialises the moments but
    not ``step``.
    """
    for part in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(part, "optimizer", None)
        if inner is None or getattr(part, "init_state_fn", None) is None:
            continue
        part.init_state_fn(inner, part.config)
        if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            for group in inner.param_groups:
                for param in group["params"]:
                    inner.state[param].setdefault("step", torch.zeros((), dtype=torch.float32))
