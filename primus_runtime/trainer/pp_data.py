"""``dump_pp_data`` (spec M9), the trainer's half: iteration scope and the files at the end.

The wheel's recorder (``megatron.core._primus.pp_dump``, added by the ``dump_pp_data`` patch) times
every pass the schedules run; the trainer says where an iteration starts and ends (training steps
only, so evaluation is not recorded) and, after the last step, writes one file per pipeline stage
(from its data-, tensor- and context-parallel rank 0) and ``config.json`` (from global rank 0) to
``$DUMP_PP_DIR``, or ``<exp_root>/pp_data`` when that is unset. ``python -m primus_runtime
pp-timeline`` (:mod:`primus_runtime.pp_timeline`) draws them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from primus_runtime.trainer.options import Batches, Layout

ENV_DIR = "DUMP_PP_DIR"


def enabled(config: Any) -> bool:
    """Is ``dump_pp_data`` on? (``False`` on a megatron-core without the field.)"""
    return bool(getattr(config, "dump_pp_data", False))


def dump_dir(exp_root: Path) -> Path:
    return Path(os.environ.get(ENV_DIR) or exp_root / "pp_data")


@contextmanager
def iteration(config: Any) -> Iterator[None]:
    """One training step's schedule call, recorded when ``dump_pp_data`` is on."""
    if not enabled(config):
        yield
        return
    from megatron.core._primus import pp_dump

    pp_dump.begin_iteration()
    try:
        yield
    finally:
        pp_dump.end_iteration()


def write(config: Any, exp_root: Path, layout: Layout, batches: Batches, train_iters: int) -> Path | None:
    """Write this rank's part of the dump after training; the rank file's path, or ``None``."""
    if not enabled(config):
        return None
    import torch
    from megatron.core import parallel_state
    from megatron.core._primus import pp_dump

    writes = (parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0
              and parallel_state.get_tensor_model_parallel_rank() == 0)
    run_config = None
    if torch.distributed.get_rank() == 0:
        run_config = {"world_size": layout.world, "dp_size": layout.dp, "tp_size": layout.tp, "ep_size": layout.ep,
                      "pp_size": layout.pp, "vp_size": layout.vp or 1, "num_mbs": batches.num_microbatches,
                      "train_iters": train_iters}
    if not writes:
        return None
    return pp_dump.write(dump_dir(exp_root), parallel_state.get_pipeline_model_parallel_rank(), run_config)
