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

Failures are :class:`CheckpointError` (exit 5), one line naming the folder or file: a ``save``
folder that cannot be written is found by :func:`check_save_dir` before training; a save that
fails (a full disk) removes its ``.partial`` folder and leaves the previous checkpoint as the
latest; a damaged checkpoint (missing ``.metadata``, a shard file shorter than ``.metadata``
says, an unreadable ``common.pt``) is found before or while loading. A checkpoint folder holds
pickles: load only checkpoints you trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from primus_runtime.errors import PrimusRuntimeError
from primus_runtime.trainer.options import TRACKER_FILE, Checkpointing
from primus_runtime.trainer.rng import capture as _rng_state
from primus_runtime.trainer.rng import restore as _set_rng_state

log = logging.getLogger("primus_runtime.trainer")

CHECKPOINT_VERSION = 1
METADATA_FILE = ".metadata"  # torch distributed checkpointing's index of every shard's bytes
FORMAT_FILE = "metadata.json"  # megatron's: which sharded format the folder holds
COMMON_FILE = "common.pt"  # megatron's rank-0 state: iteration, samples, scheduler
#: test hook: rank 0 exits (status 17) after writing this iteration's shards, before the rename
CRASH_IN_SAVE_ENV = "PRIMUS_TRAINER_TEST_CRASH_IN_SAVE"


class CheckpointError(PrimusRuntimeError):
    exit_code = 5


#: what loading and saving raise: torch's CheckpointException derives from BaseException only
_CHECKPOINT_FAILURES: tuple[type[BaseException], ...] = (Exception, CheckpointException)


def _cause(exc: BaseException) -> str:
    """The first underlying error of ``exc``, on one line.

    torch's CheckpointException prints a traceback per rank; its ``failures`` hold the real
    errors (an EOFError, a FileNotFoundError, ...), which are what the user can act on.
    """
    if isinstance(exc, CheckpointException) and exc.failures:
        rank, (inner, _) = sorted(exc.failures.items(), key=lambda item: item[0])[0]
        return f"{_cause(inner)} (rank {rank})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def iteration_dir(root: Path, iteration: int) -> Path:
    return root / f"iter_{iteration:07d}"


def read_tracker(root: Path) -> int | None:
    """The newest complete iteration under ``root``, or None when there is none."""
    tracker = root / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_bytes().decode("utf-8", errors="replace").strip()
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text!r}") from None


def check_save_dir(ckpt: Checkpointing) -> None:
    """Refuse a ``save`` folder this rank cannot write, before any training is spent.

    Creates it when missing and writes and removes a probe file there: permission bits alone do
    not say (root, read-only mounts, a full disk). Every rank checks, as every rank writes shards.
    """
    if ckpt.save is None:
        return
    if ckpt.save.exists() and not ckpt.save.is_dir():
        raise CheckpointError(f"save: {ckpt.save} is a file, not a folder for checkpoints")
    probe = ckpt.save / f".write-probe-{os.getpid()}"
    try:
        ckpt.save.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"0")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(f"save: cannot write checkpoints to {ckpt.save}: {_cause(exc)}") from None


def verify_files(folder: Path) -> None:
    """Refuse a checkpoint whose files are missing or shorter than its ``.metadata`` records.

    ``.metadata`` (torch distributed checkpointing) lists, for every tensor and object, the
    shard file and the byte range that holds it: a file shorter than its furthest range was
    truncated (an interrupted copy, a full disk) and loading it would fail deep in torch.
    """
    import torch.distributed.checkpoint as dcp

    for name in (FORMAT_FILE, COMMON_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: {name} is missing (an incomplete or damaged checkpoint; load an "
                                  f"earlier iter_* folder)")
    try:
        backend = json.loads((folder / FORMAT_FILE).read_bytes()).get("sharded_backend")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {folder / FORMAT_FILE}: {_cause(exc)} (the checkpoint is damaged; "
                              f"load an earlier iter_* folder)") from None
    if backend != "torch_dist":
        return  # another of megatron's formats: its own loader checks it
    if not (folder / METADATA_FILE).is_file():
        raise CheckpointError(f"{folder}: {METADATA_FILE} is missing (an incomplete or damaged checkpoint; load an "
                              f"earlier iter_* folder)")
    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    except _CHECKPOINT_FAILURES as exc:
        raise CheckpointError(f"cannot read {folder / METADATA_FILE}: {_cause(exc)} (the checkpoint is "
                              f"damaged; load an earlier iter_* folder)") from None
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        if isinstance(getattr(info, "relative_path", None), str):  # a file writer's record
            needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for relative, size in sorted(needed.items()):
        path = folder / relative
        have = path.stat().st_size if path.is_file() else None
        if have is None or have < size:
            state = "is missing" if have is None else f"has {have} bytes"
            raise CheckpointError(f"{path}: {state}, {METADATA_FILE} records {size} (a truncated checkpoint; "
                                  f"load an earlier iter_* folder)")


def _latest(root: Path) -> str:
    """The latest complete checkpoint, and the free space there: torch words a full disk obscurely."""
    iteration = read_tracker(root) if (root / TRACKER_FILE).is_file() else None
    latest = "none" if iteration is None else str(iteration_dir(root, iteration))
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return latest
    return f"{latest} ({free / 2**20:.1f} MiB free there)"


def _abandon(partial: Path, rank: int) -> None:
    """Drop a failed save's folder (rank 0): nothing reads it, and a full disk wants the space back."""
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)


def _publish(root: Path, partial: Path, final: Path, iteration: int) -> None:
    """Rank 0, once every rank has written: the partial folder becomes ``final``, then the tracker names it."""
    old = root / f".{final.name}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(partial, final)
    _fsync_dir(root)
    _write_tracker(root, iteration)
    shutil.rmtree(old, ignore_errors=True)


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
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
        except OSError as exc:
            raise CheckpointError(f"cannot save iteration {iteration} to {root}: {_cause(exc)}") from None
    torch.distributed.barrier()
    state = _state_dict(chunks, optimizer, params, with_optim=not ckpt.no_save_optim,
                        with_rng=not ckpt.no_save_rng, loading=False)
    state.update(checkpoint_version=CHECKPOINT_VERSION, iteration=iteration,
                 consumed_train_samples=train.consumed_train_samples,
                 consumed_valid_samples=train.consumed_valid_samples,
                 scheduler=scheduler.state_dict(), params=dict(params))
    try:
        dist_checkpointing.save(state, str(partial), validate_access_integrity=True)
    except _CHECKPOINT_FAILURES as exc:
        _abandon(partial, rank)
        raise CheckpointError(f"cannot save iteration {iteration} to {root}: {_cause(exc)}; the latest complete "
                              f"checkpoint is still {_latest(root)}") from None
    if rank == 0 and os.environ.get(CRASH_IN_SAVE_ENV) == str(iteration):
        log.error("test hook %s: exiting in the middle of saving iteration %d", CRASH_IN_SAVE_ENV, iteration)
        import psutil

        for child in psutil.Process().children(recursive=True):  # megatron's writer's helper processes
            child.kill()
        os._exit(17)
    torch.distributed.barrier()
    if rank == 0:
        try:
            _publish(root, partial, final, iteration)
        except OSError as exc:
            _abandon(partial, rank)
            raise CheckpointError(f"cannot record iteration {iteration} in {root}: {_cause(exc)}; the latest "
                                  f"complete checkpoint is still {_latest(root)}") from None
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
    verify_files(folder)
    try:
        common = dist_checkpointing.load_common_state_dict(str(folder))
    except _CHECKPOINT_FAILURES as exc:
        raise CheckpointError(f"cannot read {folder / COMMON_FILE}: {_cause(exc)} (the checkpoint is damaged; "
                              f"load an earlier iter_* folder)") from None
    with_optim = not (ckpt.finetune or ckpt.no_load_optim)
    with_rng = not (ckpt.finetune or ckpt.no_load_rng)
    if with_optim:
        _init_optimizer_state(optimizer)
    state = _state_dict(chunks, optimizer, params, with_optim=with_optim, with_rng=with_rng, loading=True)
    try:
        loaded = dist_checkpointing.load(state, str(folder))
    except _CHECKPOINT_FAILURES as exc:  # several kinds; say which checkpoint and what to try
        raise CheckpointError(f"cannot load {folder}: {_cause(exc)} (a damaged checkpoint: load an earlier "
                              f"iter_* folder; a different parallel layout needs no_load_rng; a different model "
                              f"cannot be loaded)") from None
    with torch.no_grad():  # the distributed optimizer copies into views of fp32 parameters
        for key, chunk in zip(_model_keys(chunks), chunks):
            chunk.module.load_state_dict(loaded[key])
        if with_optim:
            optimizer.load_state_dict(loaded["optimizer"])
            _restore_adam_steps(optimizer)
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
    for part, inner in _inner_optimizers(optimizer):
        if getattr(part, "init_state_fn", None) is None:
            continue
        part.init_state_fn(inner, part.config)
        if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            for group in inner.param_groups:
                for param in group["params"]:
                    inner.state[param].setdefault("step", torch.zeros((), dtype=torch.float32))


def _restore_adam_steps(optimizer: Any) -> None:
    """Set each parameter's Adam ``step`` to the checkpoint's, as a tensor of its own.

    With PyTorch's own Adam (no TransformerEngine/Apex, e.g. on CPU), megatron.core's distributed
    optimizer keeps the step in its saved parameter groups and, on loading, writes it into every
    parameter's state; but its per-parameter state load that follows copies ``step`` from the
    loading template, which is the not-yet-stepped state of :func:`_init_optimizer_state` (0).
    And the step it writes is ONE tensor shared by every parameter, which ``torch.optim.Adam``
    increments once per parameter. Either way every bias correction after a resume was wrong
    (seen: a 2 + 2 resume left Adam at step 1 instead of 3). The loaded groups still carry the step.
    """
    for _, inner in _inner_optimizers(optimizer):
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            if group.get("step") is None:
                continue
            for param in group["params"]:
                if "step" in inner.state.get(param, {}):
                    inner.state[param]["step"] = torch.tensor(float(group["step"]), dtype=torch.float32)


def _inner_optimizers(optimizer: Any) -> list[tuple[Any, Any]]:
    """(megatron optimizer, its torch optimizer) for each part of a chained optimizer, or the one."""
    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    return [(part, part.optimizer) for part in parts if getattr(part, "optimizer", None) is not None]
