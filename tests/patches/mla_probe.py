"""Build and run ``MLASelfAttention`` of whatever megatron.core is on ``sys.path``; save what it did.

Used by the ``fused_padded_mla_attention`` tests in a subprocess, against the upstream tree and
the patched one (cpu-test flavor: MLA's rotary embedding asks for a CUDA device), with the same
seed and inputs. The core attention is a recording stand-in for TransformerEngine's: torch SDPA,
plus the ``k_channels``/``v_channels`` it was built with and the head dims it was called with.

usage: python mla_probe.py OUT.pt JSON_OPTIONS
options: {"config": {...MLATransformerConfig overrides...}, "packed": bool,
          "backend": "math" | "flash" | null (torch's own choice)}

torch's CPU flash-attention kernel, like the fused kernels this flag was written for, needs one
head dim for q, k and v; its math kernel takes any. ``backend`` restricts SDPA to one of them.
"""

from __future__ import annotations

import contextlib
import json
import sys

import torch
import torch.nn.functional as F
from probe_common import start_single_process
from torch.nn.attention import SDPBackend, sdpa_kernel

CALLS: list[list[int]] = []  # [q, k, v] head dims of every call


class RecordingSDPA(torch.nn.Module):
    """Causal torch SDPA; [seq, batch, heads, dim] in, [seq, batch, heads * dv] out."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type=None, softmax_scale=None,
                 k_channels=None, v_channels=None, cp_comm_type=None, pg_collection=None, **kwargs):
        super().__init__()
        self.softmax_scale = softmax_scale
        self.k_channels, self.v_channels = k_channels, v_channels

    def forward(self, query, key, value, attention_mask, packed_seq_params=None, attn_mask_type=None, **kwargs):
        CALLS.append([query.size(-1), key.size(-1), value.size(-1)])
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # -> [b, h, s, d]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)


def main(out: str, opts: dict) -> None:
    start_single_process()

    import megatron.core.extensions.transformer_engine as te_ext
    import megatron.core.transformer.multi_latent_attention as mla
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    mla.HAVE_TE = mla.HAVE_TE and te_ext.HAVE_TE  # as primus_runtime.model.builder does
    settings = dict(num_layers=1, hidden_size=64, num_attention_heads=4, multi_latent_attention=True,
                    q_lora_rank=None, kv_lora_rank=32, qk_head_dim=16, qk_pos_emb_head_dim=8, v_head_dim=16,
                    rope_type="rope", add_bias_linear=False, attention_dropout=0.0, hidden_dropout=0.0,
                    use_cpu_initialization=True)
    settings.update(opts.get("config", {}))
    config = MLATransformerConfig(**settings)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", multi_latent_attention=True)
    submodules = spec.submodules.self_attention.submodules
    submodules.core_attention = RecordingSDPA
    attention = mla.MLASelfAttention(config, submodules, layer_number=1)
    attention.train()

    seq, batch = (12, 1) if opts.get("packed") else (12, 3)
    hidden = torch.randn(seq, batch, config.hidden_size, generator=torch.Generator().manual_seed(7), requires_grad=True)
    kwargs = {}
    if opts.get("packed"):
        cu = torch.tensor([0, 5, seq], dtype=torch.int32)
        kwargs["packed_seq_params"] = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                                      max_seqlen_q=7, max_seqlen_kv=7)
    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}.get(opts.get("backend"))
    results: dict = {}
    try:
        with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
            output, _ = attention(hidden, attention_mask=None, **kwargs)
            output.square().sum().backward()
    except (AssertionError, RuntimeError) as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
    else:
        results["output"] = output.detach().clone()
        results["grad_hidden"] = hidden.grad.clone()
        for name, param in attention.named_parameters():
            results[f"grad:{name}"] = param.grad.clone()
    core = attention.core_attention
    results["core_attention"] = {"type": type(core).__name__, "k_channels": core.k_channels,
                                 "v_channels": core.v_channels}
    results["calls"] = CALLS
    results["q_head_dim"] = attention.q_head_dim
    torch.save(results, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
