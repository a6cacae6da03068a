"""Run the Turbo attention of whatever megatron.core is on ``sys.path`` and report what it did, as JSON.

Used by tests/patches/test_use_turbo_attention.py in a subprocess against the patched cpu-test
tree. One process runs every check of a mode and prints one JSON line, ``RESULT {...}``.

usage: python turbo_attention_probe.py MODE
modes:
  layers     SelfAttention (local spec) with the flags off (upstream's DotProductAttention) and on
             (the Turbo attention), GQA, causal and padding masks: outputs and gradients; the core
             attention class for each flag setting; multi-latent attention against an explicit
             softmax reference core attention
  kernels    TorchSDPAAttention against a float64 explicit-softmax reference: GQA, MLA head dims,
             causal (equal and unequal lengths), no mask, arbitrary mask; forward and gradients
  refusals   the config-time and call-time refusals, and the log line without feature flags
  backend    which backend and class are chosen (run with PRIMUS_TURBO_BACKEND or a stand-in
             primus_turbo on the path); with the stand-in, what the stand-in was called with
  rope       the fused rotary embedding (upstream's function compiled by torch.compile) against
             upstream's eager function, forward and gradients
"""

from __future__ import annotations

import json
import logging
import sys

import torch
from probe_common import start_single_process

HIDDEN, HEADS, GROUPS, SEQ, BATCH = 64, 4, 2, 12, 3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def config(**overrides):
    from megatron.core.transformer.transformer_config import TransformerConfig

    settings = dict(num_layers=1, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=GROUPS,
                    add_bias_linear=False, attention_dropout=0.0, hidden_dropout=0.0, use_cpu_initialization=True)
    settings.update(overrides)
    return TransformerConfig(**settings)


def self_attention(cfg, mask_type):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.attention import SelfAttention

    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    return SelfAttention(cfg, spec.submodules.self_attention.submodules, layer_number=1, attn_mask_type=mask_type)


def run_layer(module, mask):
    hidden = torch.randn(SEQ, BATCH, HIDDEN, generator=torch.Generator().manual_seed(7), requires_grad=True)
    output, _ = module(hidden, attention_mask=mask)
    output.square().sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return output.detach(), hidden.grad, grads


def layers() -> dict:
    from megatron.core.transformer.enums import AttnMaskType

    start_single_process()
    out: dict = {"types": {}}
    for name, flags in (("off", {}), ("enable_only", {"enable_primus_turbo": True}),
                        ("attention_only", {"use_turbo_attention": True}),
                        ("on", {"enable_primus_turbo": True, "use_turbo_attention": True})):
        out["types"][name] = type(self_attention(config(**flags), AttnMaskType.causal).core_attention).__name__
    padding = torch.rand(BATCH, 1, SEQ, SEQ, generator=torch.Generator().manual_seed(3)) < 0.3
    padding[..., 0] = False  # every query keeps at least one key
    for mask_type, mask in ((AttnMaskType.causal, None), (AttnMaskType.padding, padding)):
        upstream = run_layer(self_attention(config(), mask_type), mask)
        turbo = run_layer(self_attention(config(enable_primus_turbo=True, use_turbo_attention=True), mask_type), mask)
        out[mask_type.name] = {"output": rel(turbo[0], upstream[0]), "grad_hidden": rel(turbo[1], upstream[1]),
                               "grad_params": max(rel(turbo[2][k], upstream[2][k]) for k in upstream[2])}
    out["mla"] = mla()
    return out


class ReferenceCoreAttention(torch.nn.Module):
    """Explicit causal softmax attention (no SDPA): the reference for multi-latent attention."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type=None, softmax_scale=None,
                 k_channels=None, v_channels=None, cp_comm_type=None, pg_collection=None, **_):
        super().__init__()
        self.scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        out = reference(query, key, value, self.scale, "causal", None).to(query.dtype)
        return out.reshape(query.size(0), query.size(1), -1)


def mla() -> dict:
    import megatron.core.extensions.transformer_engine as te_ext
    import megatron.core.transformer.multi_latent_attention as mla_module
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    mla_module.HAVE_TE = mla_module.HAVE_TE and te_ext.HAVE_TE  # upstream 0.16.1 reports TE from its mocks
    results = {}
    for name, flags in (("reference", {}), ("turbo", {"enable_primus_turbo": True, "use_turbo_attention": True})):
        cfg = MLATransformerConfig(num_layers=1, hidden_size=HIDDEN, num_attention_heads=HEADS,
                                   multi_latent_attention=True, q_lora_rank=None, kv_lora_rank=32, qk_head_dim=16,
                                   qk_pos_emb_head_dim=8, v_head_dim=16, rope_type="rope", add_bias_linear=False,
                                   attention_dropout=0.0, hidden_dropout=0.0, use_cpu_initialization=True, **flags)
        spec = get_gpt_layer_local_spec(normalization="RMSNorm", multi_latent_attention=True)
        submodules = spec.submodules.self_attention.submodules
        submodules.core_attention = ReferenceCoreAttention
        torch.manual_seed(1234)
        model_parallel_cuda_manual_seed(1234)
        module = mla_module.MLASelfAttention(cfg, submodules, layer_number=1, attn_mask_type=AttnMaskType.causal)
        results[name] = (run_layer(module, None), type(module.core_attention).__name__)
    (ref, _), (turbo, turbo_type) = results["reference"], results["turbo"]
    return {"type": turbo_type, "output": rel(turbo[0], ref[0]), "grad_hidden": rel(turbo[1], ref[1]),
            "grad_params": max(rel(turbo[2][k], ref[2][k]) for k in ref[2])}


def reference(q, k, v, scale, kind, mask):
    """Float64 attention by its definition; [s, b, h, d] in, [s, b, h, dv] out."""
    q, k, v = (t.double().permute(1, 2, 0, 3) for t in (q, k, v))
    k, v = (t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2)) * scale
    sq, sk = scores.shape[-2:]
    if kind == "causal":
        scores = scores.masked_fill(~torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq), float("-inf"))
    elif kind == "mask":
        scores = scores.masked_fill(mask, float("-inf"))
    return (scores.softmax(-1) @ v).permute(2, 0, 1, 3)


def kernels() -> dict:
    from megatron.core._primus.turbo.attention import TorchSDPAAttention
    from megatron.core.transformer.enums import AttnMaskType

    start_single_process()
    gen = torch.Generator().manual_seed(11)
    out = {}
    cases = {  # name: (sq, sk, heads, groups, dk, dv, mask type)
        "gqa_causal": (12, 12, 4, 2, 16, 16, AttnMaskType.causal),
        "mla_dims_causal": (12, 12, 4, 4, 24, 16, AttnMaskType.causal),
        "causal_newest_queries": (5, 12, 4, 2, 16, 16, AttnMaskType.causal),
        "no_mask": (12, 9, 4, 1, 16, 16, AttnMaskType.no_mask),
        "arbitrary_mask": (12, 12, 4, 2, 16, 16, AttnMaskType.arbitrary),
    }
    for name, (sq, sk, heads, groups, dk, dv, mask_type) in cases.items():
        cfg = config(num_attention_heads=heads, num_query_groups=groups, kv_channels=dk)
        core = TorchSDPAAttention(cfg, 1, mask_type, "self", k_channels=dk, v_channels=dv)
        q = torch.randn(sq, 2, heads, dk, generator=gen, requires_grad=True)
        k = torch.randn(sk, 2, groups, dk, generator=gen, requires_grad=True)
        v = torch.randn(sk, 2, groups, dv, generator=gen, requires_grad=True)
        mask = None
        if mask_type == AttnMaskType.arbitrary:
            mask = torch.rand(2, 1, sq, sk, generator=gen) < 0.4
            mask[..., 0] = False
        weight = torch.randn(sq, 2, heads * dv, generator=gen, dtype=torch.float64)
        got = core(q, k, v, mask)
        (got.double() * weight).sum().backward()
        grads = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        kind = {"causal": "causal", "no_mask": "none", "arbitrary": "mask"}[mask_type.name]
        want = reference(q, k, v, dk ** -0.5, kind, mask).reshape(sq, 2, -1)
        (want * weight).sum().backward()
        out[name] = {"shape": list(got.shape), "output": rel(got, want),
                     "grads": max(rel(g, t.grad) for g, t in zip(grads, (q, k, v)))}
    return out


def refusals() -> dict:
    from megatron.core._primus.turbo.attention import TorchSDPAAttention
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.enums import AttnMaskType

    start_single_process()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("megatron.core._primus.turbo").addHandler(handler)
    logging.getLogger("megatron.core._primus.turbo").setLevel(logging.INFO)
    on = {"enable_primus_turbo": True, "use_turbo_attention": True}
    out: dict = {}
    for name, extra in (("window", {"window_size": (4, 0)}), ("sinks", {"softmax_type": "off-by-one"}),
                        ("qk_clip", {"log_max_attention_logit": True})):
        try:
            config(**on, **extra)
            out[name] = "accepted"
        except ValueError as exc:
            out[name] = str(exc)
        out[f"{name}_flags_off"] = _builds(extra)
    core = TorchSDPAAttention(config(**on), 1, AttnMaskType.causal, "self")
    q = torch.randn(SEQ, 1, HEADS, 16)
    cu = torch.tensor([0, 5, SEQ], dtype=torch.int32)
    try:
        core(q, q[:, :, :GROUPS], q[:, :, :GROUPS], None,
             packed_seq_params=PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu))
        out["packed"] = "accepted"
    except NotImplementedError as exc:
        out["packed"] = str(exc)
    config(enable_primus_turbo=True)
    config(**on)  # the same backend and features as the refused configs above: no second line
    out["log"] = records
    return out


def _builds(extra: dict) -> str:
    try:
        config(**extra)
        return "accepted"
    except ValueError as exc:
        return str(exc)


def backend() -> dict:
    from megatron.core._primus.turbo import attention
    from megatron.core._primus.turbo import backend as chooser
    from megatron.core.transformer.enums import AttnMaskType

    start_single_process()
    out: dict = {}
    try:
        out["backend"] = str(chooser.backend())
        out["class"] = attention.core_attention_class().__name__
    except ValueError as exc:
        out["error"] = str(exc)
        return out
    if out["backend"].startswith("primus_turbo"):
        import primus_turbo.pytorch.ops as standin

        cfg = config(enable_primus_turbo=True, use_turbo_attention=True, attention_dropout=0.0)
        turbo = attention.PrimusTurboAttention(cfg, 1, AttnMaskType.causal, "self")
        torch_path = attention.TorchSDPAAttention(cfg, 1, AttnMaskType.causal, "self")
        gen = torch.Generator().manual_seed(5)
        q = torch.randn(SEQ, BATCH, HEADS, 16, generator=gen)
        k, v = (torch.randn(SEQ, BATCH, GROUPS, 16, generator=gen) for _ in range(2))
        out["output"] = rel(turbo(q, k, v, None), torch_path(q, k, v, None))
        out["calls"] = standin.CALLS
        try:
            attention.PrimusTurboAttention(cfg, 1, AttnMaskType.padding, "self")
            out["padding"] = "accepted"
        except ValueError as exc:
            out["padding"] = str(exc)
    return out


def rope() -> dict:
    from megatron.core._primus.turbo.rope import fused_rotary
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    gen = torch.Generator().manual_seed(9)
    t = torch.randn(SEQ, BATCH, HEADS, 16, generator=gen, requires_grad=True)
    freqs = torch.randn(SEQ, 1, 1, 16, generator=gen)
    weight = torch.randn(SEQ, BATCH, HEADS, 16, generator=gen)
    out = {}
    for interleaved in (False, True):
        got = fused_rotary(t, freqs, rotary_interleaved=interleaved, multi_latent_attention=False, mscale=1.0)
        (got * weight).sum().backward()
        grad, t.grad = t.grad.clone(), None
        want = _apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=interleaved)
        (want * weight).sum().backward()
        out["interleaved" if interleaved else "halves"] = {"output": rel(got, want), "grad": rel(grad, t.grad)}
        t.grad = None
    return out


if __name__ == "__main__":
    mode = sys.argv[1]
    result = {"layers": layers, "kernels": kernels, "refusals": refusals, "backend": backend, "rope": rope}[mode]()
    print("RESULT " + json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
