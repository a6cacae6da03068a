"""The torch profiler (``profile`` + ``use_pytorch_profiler``) with Primus's options (spec M10).

Records iterations ``[profile_step_start, profile_step_end)`` (counted from this run's first
iteration, as Megatron-LM counts them) on the ranks in ``profile_ranks``, and writes the trace
into the TensorBoard folder. ``disable_profiler_activity_cpu`` records device activity only (no
CPU operator events: smaller traces); on a host without GPUs that leaves nothing to record, so
the profiler is not started. ``torch_profiler_record_shapes``, ``_with_stack`` and
``_use_gzip`` pass through.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from primus_runtime.errors import ConfigError
from primus_runtime.trainer.config import ProfilerConfig

log = logging.getLogger("primus_runtime.trainer")


def window(cfg: ProfilerConfig) -> tuple[int, int] | None:
    """Iterations ``[start, end)`` the torch profiler records, or None when it is off."""
    if not cfg.on:
        return None
    start, end = cfg.profile_step_start, cfg.profile_step_end
    if end <= start:
        raise ConfigError(f"profile_step_end ({end}) must be after profile_step_start ({start})")
    return start, end


def activities(cfg: ProfilerConfig) -> list[Any]:
    from torch.profiler import ProfilerActivity

    chosen = [] if cfg.disable_profiler_activity_cpu else [ProfilerActivity.CPU]
    if torch.cuda.is_available():  # ROCm builds report their GPU as CUDA
        chosen.append(ProfilerActivity.CUDA)
    return chosen


def make(cfg: ProfilerConfig, trace_dir: Path | None, exp_name: str, rank: int) -> Any:
    """A profiler (a context manager) to ``step()`` after each iteration, or a stand-in that does nothing."""
    recorded = window(cfg)
    if recorded is None or rank not in cfg.profile_ranks:
        return contextlib.nullcontext(_NoProfiler())
    from torch.profiler import profile, schedule, tensorboard_trace_handler

    assert trace_dir is not None
    start, end = recorded
    chosen = activities(cfg)
    if not chosen:
        log.warning("disable_profiler_activity_cpu on a host without GPUs leaves nothing to record: the torch "
                    "profiler is not started")
        return contextlib.nullcontext(_NoProfiler())
    log.info("torch profiler: iterations %d-%d, activities %s, trace to %s", start, end - 1,
             [a.name for a in chosen], trace_dir)
    return profile(
        activities=chosen,
        schedule=schedule(wait=max(start - 1, 0), warmup=1 if start > 0 else 0, active=end - start, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(trace_dir), worker_name=f"primus-exp[{exp_name}]-rank[{rank}]",
                                                 use_gzip=cfg.torch_profiler_use_gzip),
        record_shapes=cfg.torch_profiler_record_shapes,
        with_stack=cfg.torch_profiler_with_stack,
    )


class _NoProfiler:
    def step(self) -> None:
        pass
