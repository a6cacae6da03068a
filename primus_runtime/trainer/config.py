"""The trainer's typed, frozen view of a resolved experiment, one section per part that reads it.

The values come from the loader (:func:`primus_runtime.config.loader.load_experiment`), which fills
every key of the schema from the shipped defaults and checks its type; so the sections here
declare names and types only, never a default. A field is a schema key of the same name and
type (``tests/runtime/test_trainer_config.py`` checks every field against the loader's schema),
and a key the loader did not return is an error naming it, not a silent fallback.

Lists become tuples, so a section is immutable all the way down.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from primus_runtime.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """Length, batch and the order of the run (read by the loop, the data and evaluation)."""

    train_iters: int | None
    seq_length: int
    micro_batch_size: int
    global_batch_size: int | None
    seed: int
    num_workers: int
    eval_interval: int
    eval_iters: int


@dataclass(frozen=True)
class ParallelConfig:
    """How ranks split into tensor, pipeline, context, expert and data parallel groups."""

    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    num_layers_per_virtual_pipeline_stage: int | None
    expert_model_parallel_size: int
    expert_tensor_parallel_size: int | None
    context_parallel_size: int
    num_layers: int | None
    decoder_pipeline_manual_split_list: tuple[int, ...] | None


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate and weight-decay schedule."""

    lr: float
    min_lr: float
    lr_decay_style: str
    lr_decay_iters: int | None
    lr_warmup_iters: int
    lr_warmup_fraction: float | None
    lr_warmup_init: float
    weight_decay: float
    weight_decay_incr_style: str


@dataclass(frozen=True)
class CheckpointConfig:
    """Owned by :class:`~primus_runtime.trainer.checkpointer.Checkpointer` (spec M4, M5)."""

    save: str | None
    load: str | None
    save_interval: int | None
    finetune: bool
    no_save_optim: bool
    no_save_rng: bool
    no_load_optim: bool
    no_load_rng: bool
    auto_continue_train: bool
    disable_last_saving: bool


@dataclass(frozen=True)
class TrackerConfig:
    """Owned by :mod:`~primus_runtime.trainer.metrics` (spec M1, M2, M14)."""

    disable_tensorboard: bool
    tensorboard_dir: str | None
    disable_wandb: bool
    wandb_project: str | None
    wandb_exp_name: str | None
    wandb_save_dir: str | None
    wandb_entity: str | None
    disable_mlflow: bool
    mlflow_run_name: str | None
    mlflow_experiment_name: str | None


@dataclass(frozen=True)
class MetricsConfig:
    """How often the iteration line is written, and whether it carries throughput."""

    log_interval: int
    log_throughput: bool


@dataclass(frozen=True)
class MemoryConfig:
    """Owned by :class:`~primus_runtime.trainer.report.MemoryReport` (spec M11, M12)."""

    log_throughput: bool
    use_rocm_mem_info: bool
    use_rocm_mem_info_iters: tuple[int, ...]


@dataclass(frozen=True)
class ProfilerConfig:
    """Owned by :mod:`~primus_runtime.trainer.profiler` (spec M7)."""

    profile: bool
    use_pytorch_profiler: bool
    profile_step_start: int
    profile_step_end: int
    profile_ranks: tuple[int, ...]
    disable_profiler_activity_cpu: bool
    torch_profiler_record_shapes: bool
    torch_profiler_with_stack: bool
    torch_profiler_use_gzip: bool

    @property
    def on(self) -> bool:
        return self.profile and self.use_pytorch_profiler


@dataclass(frozen=True)
class WarmupConfig:
    """Owned by :mod:`~primus_runtime.trainer.pp_warmup` (spec M8)."""

    pp_warmup: bool


@dataclass(frozen=True)
class LoggingConfig:
    """Owned by :mod:`~primus_runtime.trainer.logs` (module_base.yaml's sink levels)."""

    sink_level: str | None
    file_sink_level: str
    stderr_sink_level: str


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Section = TypeVar("Section", bound="DataclassInstance")


def section(cls: type[Section], params: Mapping[str, Any]) -> Section:
    """``cls`` with each field read from ``params`` by name (lists as tuples)."""
    values = {}
    for item in dataclasses.fields(cls):
        if item.name not in params:
            raise ConfigError(f"trainer option {item.name!r} is missing from the resolved config; the shipped "
                              f"defaults (configs/modules/pre_trainer.yaml) must declare it")
        value = params[item.name]
        values[item.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True)
class TrainerConfig:
    """Every section, read once from the resolved params."""

    run: RunConfig
    parallel: ParallelConfig
    schedule: ScheduleConfig
    checkpoint: CheckpointConfig
    trackers: TrackerConfig
    metrics: MetricsConfig
    memory: MemoryConfig
    profiler: ProfilerConfig
    warmup: WarmupConfig
    logging: LoggingConfig

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainerConfig:
        kinds = typing.get_type_hints(cls)
        return cls(**{item.name: section(kinds[item.name], params) for item in dataclasses.fields(cls)})
