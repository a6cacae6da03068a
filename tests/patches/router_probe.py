"""Run ``TopKRouter.routing`` of whatever megatron.core is on ``sys.path`` and save its outputs.

Used by the router tests in a subprocess, once against the upstream tree and once against the
patched one, so that both are exercised in clean interpreters with identical inputs.

usage: python router_probe.py OUT.pt JSON_CONFIG_OVERRIDES
"""

from __future__ import annotations

import json
import sys

import torch
from probe_common import ROUTER_CONFIG, start_single_process


def main(out: str, overrides: dict) -> None:
    start_single_process()
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.transformer_config import TransformerConfig

    settings = {**ROUTER_CONFIG, **overrides.pop("config", {})}
    config = TransformerConfig(**settings)
    torch.manual_seed(1234)
    router = TopKRouter(config=config, pg_collection=ProcessGroupCollection.use_mpu_process_groups())
    router.train()
    results = {}
    for step, (seq, bsz) in enumerate(overrides.pop("shapes", [[16, 3], [7, 5]])):
        gen = torch.Generator().manual_seed(100 + step)
        logits = torch.randn(seq, bsz, config.num_moe_experts, generator=gen, requires_grad=True)
        probs, routing_map = router.routing(logits)
        probs.sum().backward()
        results[f"probs{step}"] = probs.detach().clone()
        results[f"map{step}"] = routing_map.clone()
        results[f"grad{step}"] = logits.grad.clone()
    results["type"] = f"{type(router).__module__}.{type(router).__qualname__}"
    torch.save(results, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
