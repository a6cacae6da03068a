"""Settings the trainer derives from the flat params: parallel layout, batches, schedule, paths.

Pure Python (no torch), so every rule here is unit-tested directly. The trainer-level Primus
flags that only change settings (``disable_tensorboard``, ``disable_wandb``, ``disable_mlflow``,
``auto_continue_train``) are resolved here too, each returning notes that the run logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primus_runtime.errors import ConfigError

TRACKER_FILE = "latest_checkpointed_iteration.txt"


@dataclass(frozen=True)
class Layout:
    """How the world's ranks split into tensor, pipeline, context, expert and data parallel groups."""

    world: int
    tp: int
    pp: int
    vp: int | None
    cp: int
    ep: int
    etp: int
    dp: int


def parallel_layout(params: Mapping[str, Any], world: int) -> Layout:
    tp = int(params.get("tensor_model_parallel_size", 1))
    pp = int(params.get("pipeline_model_parallel_size", 1))
    cp = int(params.get("context_parallel_size", 1))
    ep = int(params.get("expert_model_parallel_size", 1))
    etp = int(params.get("expert_tensor_parallel_size") or tp)
    if cp != 1:
        # every context-parallel rank would need its slice of each sequence (and the attention
        # that joins them); the trainer's data path does not split sequences yet
        raise ConfigError(f"context_parallel_size={cp}: the trainer does not split sequences across context-parallel "
                          f"ranks yet; use 1")
    model_parallel = tp * pp * cp
    if world % model_parallel:
        raise ConfigError(f"world size {world} is not divisible by tensor x pipeline x context parallel "
                          f"({tp} x {pp} x {cp})")
    dp = world // model_parallel
    if (dp * cp * tp) % (ep * etp):
        raise ConfigError(f"expert_model_parallel_size x expert_tensor_parallel_size ({ep} x {etp}) must divide "
                          f"data x context x tensor parallel ({dp} x {cp} x {tp})")
    vp = None
    per_virtual = params.get("num_layers_per_virtual_pipeline_stage")
    if per_virtual is not None:
        layers = int(params["num_layers"])
        if pp < 2 or layers % pp or (layers // pp) % int(per_virtual):
            raise ConfigError(f"num_layers_per_virtual_pipeline_stage={per_virtual} must divide the layers of each "
                              f"of {pp} pipeline stages (num_layers={layers}), with pipeline_model_parallel_size > 1")
        vp = layers // pp // int(per_virtual)
    return Layout(world, tp, pp, vp, cp, ep, etp, dp)


@dataclass(frozen=True)
class Batches:
    global_batch: int
    micro_batch: int
    num_microbatches: int


def batch_plan(params: Mapping[str, Any], dp: int) -> Batches:
    """Global batch (default: micro batch x data parallel) and microbatches per step and rank."""
    micro = int(params.get("micro_batch_size", 1))
    gbs = params.get("global_batch_size")
    gbs = micro * dp if gbs is None else int(gbs)
    if gbs % (micro * dp):
        raise ConfigError(f"global_batch_size {gbs} must be a multiple of micro_batch_size x data parallel "
                          f"({micro} x {dp})")
    return Batches(gbs, micro, gbs // (micro * dp))


@dataclass(frozen=True)
class Schedule:
    """OptimizerParamScheduler's arguments; its steps count samples, as Megatron-LM's do."""

    init_lr: float
    max_lr: float
    min_lr: float
    warmup_steps: int
    decay_steps: int
    decay_style: str
    start_wd: float
    end_wd: float
    wd_incr_steps: int
    wd_incr_style: str


def lr_schedule(params: Mapping[str, Any], train_iters: int, gbs: int) -> Schedule:
    decay_iters = params.get("lr_decay_iters") or train_iters
    decay_steps = int(decay_iters) * gbs
    fraction = params.get("lr_warmup_fraction")
    warmup = int(fraction * decay_steps) if fraction is not None else int(params.get("lr_warmup_iters", 0)) * gbs
    if warmup > decay_steps:
        raise ConfigError(f"the learning-rate warm-up ({warmup // gbs} iterations) is longer than its decay "
                          f"({decay_iters} iterations)")
    wd = float(params.get("weight_decay", 0.0))
    return Schedule(
        init_lr=float(params.get("lr_warmup_init", 0.0)), max_lr=float(params["lr"]),
        min_lr=float(params.get("min_lr", 0.0)), warmup_steps=warmup, decay_steps=decay_steps,
        decay_style=str(params.get("lr_decay_style", "linear")),
        start_wd=float(params.get("start_weight_decay") or wd), end_wd=float(params.get("end_weight_decay") or wd),
        wd_incr_steps=train_iters * gbs, wd_incr_style=str(params.get("weight_decay_incr_style", "constant")),
    )


@dataclass(frozen=True)
class Identity:
    """Who runs the experiment and where it writes (from the experiment file)."""

    work_group: str
    user_name: str
    exp_name: str
    exp_root: Path


@dataclass(frozen=True)
class Trackers:
    """Which trackers run and where they write; ``None`` is off."""

    tensorboard_dir: Path | None
    wandb: dict[str, str] | None
    mlflow: dict[str, str] | None
    notes: list[str] = field(default_factory=list)


def trackers(params: Mapping[str, Any], who: Identity) -> Trackers:
    """``disable_tensorboard`` / ``disable_wandb`` / ``disable_mlflow`` (spec M1, M2, M14).

    TensorBoard runs when enabled, or when the torch profiler needs its folder for traces; its
    folder is ``tensorboard_dir`` or ``<exp_root>/tensorboard``. W&B and MLflow run only when
    enabled, with their names defaulting as the module config documents.
    """
    notes = []
    profiling = bool(params.get("profile")) and bool(params.get("use_pytorch_profiler"))
    tb = None
    if not params.get("disable_tensorboard", True) or profiling:
        tb = Path(params.get("tensorboard_dir") or who.exp_root / "tensorboard")
        if params.get("disable_tensorboard", True):
            notes.append(f"TensorBoard enabled although disable_tensorboard is true: the torch profiler writes its "
                         f"traces to {tb}")
    elif params.get("tensorboard_dir"):
        notes.append(f"tensorboard_dir={params['tensorboard_dir']} is ignored: disable_tensorboard is true")
    wandb = None
    if not params.get("disable_wandb", True):
        wandb = {"project": params.get("wandb_project") or f"{who.work_group}_{who.user_name}",
                 "name": params.get("wandb_exp_name") or who.exp_name,
                 "dir": str(params.get("wandb_save_dir") or who.exp_root / "wandb")}
        if params.get("wandb_entity"):
            wandb["entity"] = str(params["wandb_entity"])
    mlflow = None
    if not params.get("disable_mlflow", True):
        mlflow = {"run_name": params.get("mlflow_run_name") or f"{who.work_group}_{who.user_name}",
                  "experiment": params.get("mlflow_experiment_name") or who.exp_name,
                  "dir": str(who.exp_root / "mlflow")}
    return Trackers(tb, wandb, mlflow, notes)


@dataclass(frozen=True)
class Checkpointing:
    save: Path | None
    load: Path | None
    save_interval: int | None
    finetune: bool
    no_load_optim: bool
    no_load_rng: bool
    no_save_optim: bool
    no_save_rng: bool
    disable_last_saving: bool
    notes: list[str] = field(default_factory=list)


def checkpointing(params: Mapping[str, Any], who: Identity) -> Checkpointing:
    """Where to save and load, with ``auto_continue_train`` applied (spec M4).

    With ``auto_continue_train``, ``save`` defaults to ``<exp_root>/checkpoints``; when it holds
    a tracker file the run resumes from it as a continuation of the same run (``load = save``,
    and ``finetune``, ``no_load_optim``, ``no_load_rng`` off); otherwise it starts as configured.
    """
    notes = []
    save = Path(params["save"]) if params.get("save") else None
    load = Path(params["load"]) if params.get("load") else None
    finetune = bool(params.get("finetune"))
    no_load_optim, no_load_rng = bool(params.get("no_load_optim")), bool(params.get("no_load_rng"))
    if params.get("auto_continue_train"):
        if save is None:
            save = who.exp_root / "checkpoints"
            notes.append(f"auto_continue_train: save is null, saving to {save}")
        if (save / TRACKER_FILE).is_file():
            for name, was in (("finetune", finetune), ("no_load_optim", no_load_optim), ("no_load_rng", no_load_rng)):
                if was:
                    notes.append(f"auto_continue_train: {name} was true, set to false to continue the run")
            if load != save:
                notes.append(f"auto_continue_train: load was {load}, set to {save} (it has a checkpoint)")
            load, finetune, no_load_optim, no_load_rng = save, False, False, False
        else:
            notes.append(f"auto_continue_train: no checkpoint in {save}, starting "
                         + (f"from load={load}" if load else "from scratch"))
    interval = params.get("save_interval")
    return Checkpointing(save, load, int(interval) if interval else None, finetune, no_load_optim, no_load_rng,
                         bool(params.get("no_save_optim")), bool(params.get("no_save_rng")),
                         bool(params.get("disable_last_saving")), notes)


def should_save(ckpt: Checkpointing, iteration: int, train_iters: int, final: bool) -> bool:
    """Save now? An interval save, or the final one; ``disable_last_saving`` skips both at the last iteration."""
    if ckpt.save is None:
        return False
    if ckpt.disable_last_saving and iteration == train_iters:
        return False
    if final:
        return True
    if not ckpt.save_interval:
        return False
    return iteration % ckpt.save_interval == 0


def memory_sample_due(params: Mapping[str, Any], log_index: int) -> bool:
    """Take a fresh device-memory sample at this (1-based) log line? (spec M11/M12)."""
    if not params.get("log_throughput", True):
        return False
    return bool(params.get("use_rocm_mem_info")) or log_index in (params.get("use_rocm_mem_info_iters") or [])


def memory_report_on(params: Mapping[str, Any]) -> bool:
    return bool(params.get("log_throughput", True)) and (
        bool(params.get("use_rocm_mem_info")) or bool(params.get("use_rocm_mem_info_iters")))


def profile_window(params: Mapping[str, Any]) -> tuple[int, int] | None:
    """Iterations ``[start, end)`` the torch profiler records, or None when it is off."""
    if not (params.get("profile") and params.get("use_pytorch_profiler")):
        return None
    start, end = int(params.get("profile_step_start", 10)), int(params.get("profile_step_end", 12))
    if end <= start:
        raise ConfigError(f"profile_step_end ({end}) must be after profile_step_start ({start})")
    return start, end
