"""Settings the trainer derives from its typed config: parallel layout, batches, schedule, paths.

Pure Python (no torch), so every rule here is unit-tested directly. The trainer-level Primus
flags that only change settings (``disable_tensorboard``, ``disable_wandb``, ``disable_mlflow``,
``auto_continue_train``) are resolved here too, each returning notes that the run logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from primus_runtime.errors import ConfigError
from primus_runtime.model import pipeline_split
from primus_runtime.trainer.config import CheckpointConfig, ParallelConfig, ScheduleConfig, TrackerConfig

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


def parallel_layout(cfg: ParallelConfig, world: int) -> Layout:
    tp, pp, cp = cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.context_parallel_size
    ep = cfg.expert_model_parallel_size
    etp = cfg.expert_tensor_parallel_size or tp
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
    per_virtual = cfg.num_layers_per_virtual_pipeline_stage
    split = cfg.decoder_pipeline_manual_split_list
    if split is not None:  # VPP from the split's length (spec M7)
        try:
            vp = pipeline_split.virtual_size(list(split), cfg.num_layers or 0, pp,
                                             {"num_layers_per_virtual_pipeline_stage": per_virtual})
        except pipeline_split.SplitError as exc:
            raise ConfigError(str(exc)) from None
        return Layout(world, tp, pp, vp if vp > 1 else None, cp, ep, etp, dp)
    if per_virtual is not None:
        layers = cfg.num_layers or 0
        if pp < 2 or not layers or layers % pp or (layers // pp) % per_virtual:
            raise ConfigError(f"num_layers_per_virtual_pipeline_stage={per_virtual} must divide the layers of each "
                              f"of {pp} pipeline stages (num_layers={cfg.num_layers}), with "
                              f"pipeline_model_parallel_size > 1")
        vp = layers // pp // per_virtual
    return Layout(world, tp, pp, vp, cp, ep, etp, dp)


@dataclass(frozen=True)
class Batches:
    global_batch: int
    micro_batch: int
    num_microbatches: int


def batch_plan(micro: int, global_batch: int | None, dp: int) -> Batches:
    """Global batch (null: micro batch x data parallel) and microbatches per step and rank."""
    gbs = micro * dp if global_batch is None else global_batch
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


def lr_schedule(cfg: ScheduleConfig, train_iters: int, gbs: int) -> Schedule:
    """Weight decay is constant at ``weight_decay`` unless ``weight_decay_incr_style`` says otherwise."""
    decay_iters = cfg.lr_decay_iters or train_iters
    decay_steps = decay_iters * gbs
    fraction = cfg.lr_warmup_fraction
    warmup = int(fraction * decay_steps) if fraction is not None else cfg.lr_warmup_iters * gbs
    if warmup > decay_steps:
        raise ConfigError(f"the learning-rate warm-up ({warmup // gbs} iterations) is longer than its decay "
                          f"({decay_iters} iterations)")
    return Schedule(
        init_lr=cfg.lr_warmup_init, max_lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=warmup, decay_steps=decay_steps,
        decay_style=cfg.lr_decay_style, start_wd=cfg.weight_decay, end_wd=cfg.weight_decay,
        wd_incr_steps=train_iters * gbs, wd_incr_style=cfg.weight_decay_incr_style,
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


def trackers(cfg: TrackerConfig, profiling: bool, who: Identity) -> Trackers:
    """``disable_tensorboard`` / ``disable_wandb`` / ``disable_mlflow`` (spec M1, M2, M14).

    TensorBoard runs when enabled, or when the torch profiler needs its folder for traces; its
    folder is ``tensorboard_dir`` or ``<exp_root>/tensorboard``. W&B and MLflow run only when
    enabled, with their names defaulting as the module config documents.
    """
    notes = []
    tb = None
    if not cfg.disable_tensorboard or profiling:
        tb = Path(cfg.tensorboard_dir or who.exp_root / "tensorboard")
        if cfg.disable_tensorboard:
            notes.append(f"TensorBoard enabled although disable_tensorboard is true: the torch profiler writes its "
                         f"traces to {tb}")
    elif cfg.tensorboard_dir:
        notes.append(f"tensorboard_dir={cfg.tensorboard_dir} is ignored: disable_tensorboard is true")
    wandb = None
    if not cfg.disable_wandb:
        wandb = {"project": cfg.wandb_project or f"{who.work_group}_{who.user_name}",
                 "name": cfg.wandb_exp_name or who.exp_name,
                 "dir": str(cfg.wandb_save_dir or who.exp_root / "wandb")}
        if cfg.wandb_entity:
            wandb["entity"] = cfg.wandb_entity
    mlflow = None
    if not cfg.disable_mlflow:
        mlflow = {"run_name": cfg.mlflow_run_name or f"{who.work_group}_{who.user_name}",
                  "experiment": cfg.mlflow_experiment_name or who.exp_name,
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


def checkpointing(cfg: CheckpointConfig, who: Identity) -> Checkpointing:
    """Where to save and load, with ``auto_continue_train`` applied (spec M4).

    With ``auto_continue_train``, ``save`` defaults to ``<exp_root>/checkpoints``; when it holds
    a tracker file the run resumes from it as a continuation of the same run (``load = save``,
    and ``finetune``, ``no_load_optim``, ``no_load_rng`` off); otherwise it starts as configured.
    """
    notes = []
    save = Path(cfg.save) if cfg.save else None
    load = Path(cfg.load) if cfg.load else None
    finetune, no_load_optim, no_load_rng = cfg.finetune, cfg.no_load_optim, cfg.no_load_rng
    if cfg.auto_continue_train:
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
    return Checkpointing(save, load, cfg.save_interval or None, finetune, no_load_optim, no_load_rng,
                         cfg.no_save_optim, cfg.no_save_rng, cfg.disable_last_saving, notes)


def should_save(ckpt: Checkpointing, iteration: int, train_iters: int, final: bool) -> bool:
    """Save now? An interval save, or the final one; ``disable_last_saving`` skips both at the last iteration."""
    if ckpt.save is None:
        return False
    if ckpt.disable_last_saving and iteration == train_iters:
        return False
    if final:
        return True
    return ckpt.save_interval is not None and ckpt.save_interval > 0 and iteration % ckpt.save_interval == 0
