"""Run ``TopKRouter.routing`` (or ``forward``) of whatever megatron.core is on ``sys.path`` and save its outputs.

Used by the router tests in a subprocess, once against the upstream tree and once against the
patched one, so that both are exercised in clean interpreters with identical inputs.

With ``"forward": true`` the router runs its whole ``forward()`` on hidden states: gating, then
upstream's force-balancing ("uniform": random logits from the expert-parallel RNG stream), then
``routing()``. The gating moves the router weight to the CUDA device, so that mode needs a
cpu-test flavor tree. Besides the outputs, the probe records which of the patches' router modules
(``megatron.core._primus.moe_even_routing``, ``.fused_router``) were imported: a disabled Primus
router feature never imports its module.

usage: python router_probe.py OUT.pt JSON_OPTIONS   ({"config": {...}, "shapes": [[seq, bsz], ...], "forward": bool})
"""

from __future__ import annotations

import json
import sys

import torch
from probe_common import ROUTER_CONFIG, start_single_process

ROUTER_MODULES = ("megatron.core._primus.moe_even_routing", "megatron.core._primus.fused_router")


def process_groups() -> dict:
    """The router's process groups as this release takes them: ``pg_collection`` since
    megatron-core 0.15, ``model_comm_pgs`` before (the probe also runs on other releases)."""
    try:
        from megatron.core.process_groups_config import ProcessGroupCollection
    except ImportError:
        from megatron.core.process_groups_config import ModelCommProcessGroups

        return {"model_comm_pgs": ModelCommProcessGroups.use_mpu_process_groups()}
    return {"pg_collection": ProcessGroupCollection.use_mpu_process_groups()}


def main(out: str, overrides: dict) -> None:
    start_single_process()
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.transformer_config import TransformerConfig

    settings = {**ROUTER_CONFIG, **overrides.pop("config", {})}
    forward = bool(overrides.pop("forward", False))
    config = TransformerConfig(**settings)
    torch.manual_seed(1234)
    router = TopKRouter(config=config, **process_groups())
    if forward:
        model_parallel_cuda_manual_seed(1234)  # the expert-parallel stream the "uniform" mode draws from
    router.train()
    results = {}
    for step, (seq, bsz) in enumerate(overrides.pop("shapes", [[16, 3], [7, 5]])):
        gen = torch.Generator().manual_seed(100 + step)
        if forward:
            inputs = torch.randn(seq, bsz, config.hidden_size, generator=gen, requires_grad=True)
            probs, routing_map = router(inputs)
        else:
            inputs = torch.randn(seq, bsz, config.num_moe_experts, generator=gen, requires_grad=True)
            probs, routing_map = router.routing(inputs)
        probs.sum().backward()
        results[f"probs{step}"] = probs.detach().clone()
        results[f"map{step}"] = routing_map.clone()
        results[f"grad{step}"] = inputs.grad.clone()
    results["type"] = f"{type(router).__module__}.{type(router).__qualname__}"
    results["router_modules"] = sorted(name for name in ROUTER_MODULES if name in sys.modules)
    torch.save(results, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
