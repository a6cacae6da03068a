"""Probe for use_deprecated_20241209_moe_layer: which MoE layer a TransformerLayer builds, and which
configurations the flag refuses.

``python deprecated_moe_probe.py OUT.json '{"configs": {...}}'`` with a tree first on the path;
writes, per named config overrides, the class of ``TransformerLayer.mlp`` (module.qualname) or
the error raised while building the config or the layer.
"""

from __future__ import annotations

import json
import sys

import torch.nn.functional as F
from probe_common import start_single_process

BASE = dict(num_layers=1, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, num_moe_experts=4,
            moe_router_topk=2, moe_aux_loss_coeff=1e-2, moe_router_load_balancing_type="aux_loss",
            moe_token_dispatcher_type="alltoall", add_bias_linear=False, gated_linear_unit=True,
            activation_func=F.silu, use_cpu_initialization=True)


def build(overrides: dict) -> str:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig

    try:
        config = TransformerConfig(**{**BASE, **overrides})
        layer = build_module(get_gpt_layer_local_spec(num_experts=config.num_moe_experts), config=config)
    except (ValueError, TypeError, AssertionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    cls = type(layer.mlp)
    return f"{cls.__module__}.{cls.__qualname__}"


def main(out: str, opts: dict) -> None:
    start_single_process()
    result = {name: build(overrides) for name, overrides in opts["configs"].items()}
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
