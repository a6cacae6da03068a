"""Run a real ``MoELayer`` forward and record how many tokens each expert receives.

The layer is the MoE MLP of megatron's local GPT layer spec (``SequentialMLP`` experts), built
for one process (EP=1) with the named token dispatcher; the probe wraps the experts' ``forward``
to record the ``tokens_per_expert`` the dispatcher hands them. Needs a cpu-test flavor tree.

usage: python moe_layer_probe.py OUT.json JSON_OPTIONS
       ({"config": {...}, "shapes": [[seq, bsz], ...]}; config overrides BASE)
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from probe_common import start_single_process

BASE = dict(num_layers=1, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, num_moe_experts=8,
            moe_router_topk=2, moe_aux_loss_coeff=0.0, moe_router_load_balancing_type="none",
            moe_token_dispatcher_type="alltoall", add_bias_linear=False, gated_linear_unit=True,
            activation_func=F.silu, use_cpu_initialization=True)


def main(out: str, opts: dict) -> None:
    start_single_process()
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(**{**BASE, **opts.get("config", {})})
    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    spec = get_gpt_layer_local_spec(num_experts=config.num_moe_experts)
    layer = build_module(spec.submodules.mlp, config=config)
    received: list[list[int]] = []
    experts_forward = layer.experts.forward

    def recording_forward(hidden, tokens_per_expert, probs):
        received.append([int(n) for n in tokens_per_expert])
        return experts_forward(hidden, tokens_per_expert, probs)

    layer.experts.forward = recording_forward
    outputs = []
    for step, (seq, bsz) in enumerate(opts.get("shapes", [[16, 3]])):
        hidden = torch.randn(seq, bsz, config.hidden_size, generator=torch.Generator().manual_seed(100 + step))
        output, _ = layer(hidden)
        outputs.append(list(output.shape))
    with open(out, "w") as fh:
        json.dump({"tokens_per_expert": received, "output_shapes": outputs, "layer": type(layer).__qualname__}, fh)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
