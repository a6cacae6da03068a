"""The data this rank reads: the datasets, and one iterator per model chunk at a pipeline end.

Composes :mod:`.data` (megatron's GPT datasets, the consumed-samples sampler): only the first and
last pipeline stages read data (tokens; labels and loss mask), the others get ``None``. With
one model chunk the schedule takes a bare iterator, with virtual pipeline stages a list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from primus_runtime.trainer import data
from primus_runtime.trainer.config import RunConfig
from primus_runtime.trainer.options import Batches, Layout


def pipeline_ends(chunks: int, layout: Layout) -> list[tuple[bool, bool]]:
    """(first stage?, last stage?) of each model chunk of this rank."""
    from megatron.core import parallel_state

    return [(parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=i if layout.vp else None),
             parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=i if layout.vp else None))
            for i in range(chunks)]


class Feed:
    """Training and validation datasets; every rank builds them (the builder synchronises)."""

    def __init__(self, params: Mapping[str, Any], run: RunConfig, layout: Layout, batches: Batches,
                 chunks: int) -> None:
        from megatron.core import parallel_state

        self.ends = pipeline_ends(chunks, layout)
        self.batches, self.layout, self.workers = batches, layout, run.num_workers
        sizes = data.split_sizes(run.train_iters or 0, batches.global_batch, run.eval_interval, run.eval_iters)
        needs_data = any(first or last for first, last in self.ends)
        self.train, self.valid, _ = data.build_datasets(params, data.token_ids(params), sizes, needs_data, layout.dp)
        self.dp_rank = parallel_state.get_data_parallel_rank()

    def iterators(self, dataset: Any, consumed: int) -> Any:
        """What the pipeline schedule's ``data_iterator`` takes, from ``consumed`` samples on."""
        its = [data.loader(dataset, consumed, self.batches.micro_batch, self.dp_rank, self.layout.dp, self.workers)
               if (first or last) and dataset is not None else None for first, last in self.ends]
        return its if len(its) > 1 else its[0]
