"""Training FLOPs of one GPT iteration, by Megatron's convention (our own implementation).

Counted: every matrix multiply of the forward pass at 2 FLOPs per multiply-add, times 3 for
forward plus backward (the backward pass costs two forwards); causal attention counts half of
the score and context products ("only half of the attention matrix is non-zero", Megatron-LM
since core 0.12). Not counted: norms, activations, softmax, rotary embeddings, the MTP layers.

Per token and layer:

- attention projections: query ``h x heads*kv`` (through ``q_lora_rank`` for MLA when set), key and
  value ``h x 2*groups*kv`` (GQA; MLA: the latent down-projection and its up-projection), output
  ``heads*v x h``;
- core attention: ``seq x heads x (qk + v)`` multiply-adds, halved for causal masking;
- MLP: ``h x ffn`` in and out, the in-projection doubled for gated units (SwiGLU); a MoE layer
  runs ``topk`` experts of ``moe_ffn`` plus the shared expert (the router is not counted, as in
  Megatron-LM);
- and once per token the output layer, ``h x vocab``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from primus_runtime.model.config_map import ffn_hidden_size, moe_layer_pattern

#: forward + backward, times 2 FLOPs per multiply-add
_TRAIN = 3 * 2


def _moe_layers(params: Mapping[str, Any]) -> list[bool]:
    layers = int(params["num_layers"])
    if not params.get("num_experts"):
        return [False] * layers
    pattern = moe_layer_pattern(params["moe_layer_freq"], layers)
    if isinstance(pattern, int):
        return [i % pattern == 0 for i in range(layers)]
    return [bool(v) for v in pattern]


def flops_per_token(params: Mapping[str, Any], seq_length: int, padded_vocab: int) -> float:
    """Training FLOPs for one token of a ``seq_length`` sequence."""
    h = int(params["hidden_size"])
    heads = int(params["num_attention_heads"])
    gated = 2 if params.get("swiglu") else 1
    causal = 0.5
    if params.get("multi_latent_attention"):
        qk, pos, v = int(params["qk_head_dim"]), int(params["qk_pos_emb_head_dim"]), int(params["v_head_dim"])
        q_lora, kv_lora = params.get("q_lora_rank"), int(params["kv_lora_rank"])
        q_proj = h * heads * (qk + pos) if q_lora is None else h * int(q_lora) + int(q_lora) * heads * (qk + pos)
        kv_proj = h * (kv_lora + pos) + kv_lora * heads * (qk + v)
        attn_proj = q_proj + kv_proj + heads * v * h
        core = seq_length * heads * (qk + pos + v) * causal
    else:
        kv = int(params.get("kv_channels") or h // heads)
        groups = int(params.get("num_query_groups") or heads) if params.get("group_query_attention") else heads
        attn_proj = h * heads * kv + 2 * h * groups * kv + heads * kv * h
        core = seq_length * heads * 2 * kv * causal
    dense_mlp = (gated + 1) * h * ffn_hidden_size(params)
    moe_mlp = 0
    if params.get("num_experts"):
        topk = int(params["moe_router_topk"])
        expert_ffn = int(params.get("moe_ffn_hidden_size") or ffn_hidden_size(params))
        shared = int(params.get("moe_shared_expert_intermediate_size") or 0)
        moe_mlp = topk * (gated + 1) * h * expert_ffn + (gated + 1) * h * shared
    per_layer = sum(attn_proj + core + (moe_mlp if moe else dense_mlp) for moe in _moe_layers(params))
    return float(_TRAIN * (per_layer + h * padded_vocab))


def flops_per_iteration(params: Mapping[str, Any], global_batch: int, seq_length: int, padded_vocab: int) -> float:
    return global_batch * seq_length * flops_per_token(params, seq_length, padded_vocab)
