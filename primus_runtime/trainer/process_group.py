"""The run's process group, as a context manager: joined on entry, destroyed on every way out.

On a normal exit every rank first meets at a barrier, so that no rank tears the group down
while another still talks to it; after an error the group is destroyed without waiting for
ranks that may never arrive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from primus_runtime.trainer import setup


@contextlib.contextmanager
def joined(params: Mapping[str, Any]) -> Iterator[tuple[int, int]]:
    """(rank, world) of this process in the torchrun group (see :func:`.setup.init_distributed`)."""
    rank, world = setup.init_distributed(params)
    try:
        yield rank, world
        torch.distributed.barrier()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
