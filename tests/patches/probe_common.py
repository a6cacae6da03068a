"""What the probe scripts share: a one-process gloo world with megatron's parallel state, and
the small router configuration the router probes use.

The probes run as scripts (``python tests/patches/<name>_probe.py``), so this folder is on their
path and they import this module by name; the repository is on their path too (tests/procs.py).
"""

from __future__ import annotations

import os

import torch

from tests.procs import free_port

#: TopKRouter settings of the router probes; a probe's "config" overrides them
ROUTER_CONFIG = dict(
    num_layers=1,
    hidden_size=32,
    num_attention_heads=4,
    num_moe_experts=8,
    moe_router_topk=2,
    moe_aux_loss_coeff=0.01,
    moe_router_load_balancing_type="aux_loss",
    use_cpu_initialization=True,
)


def start_single_process() -> None:
    """``torch.distributed`` with one gloo rank on a free port, then megatron's parallel state."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel()
