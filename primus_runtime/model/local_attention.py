"""Core attention for multi-latent attention where TransformerEngine is absent.

megatron.core 0.16.1's local ``DotProductAttention`` assumes one head size for queries, keys and
values and takes no ``k_channels``/``v_channels``, so the local layer spec cannot build MLA,
whose value heads are narrower than its query/key heads. This module takes the arguments MLA
passes (TransformerEngine's) and computes causal softmax attention with torch SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType


class SDPACoreAttention(torch.nn.Module):
    """Causal attention: [seq, batch, heads, dim] query/key/value in, [seq, batch, heads * v_dim] out."""

    def __init__(self, config: Any, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str = "self",
                 softmax_scale: float | None = None, k_channels: int | None = None, v_channels: int | None = None,
                 cp_comm_type: str | None = None, pg_collection: Any = None, **_: Any) -> None:
        super().__init__()
        if config.context_parallel_size != 1:
            raise ValueError("the local MLA core attention has no context parallelism; install TransformerEngine")
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"the local MLA core attention is causal only, not {attn_mask_type}")
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                attn_mask_type: AttnMaskType | None = None, attention_bias: Any = None,
                packed_seq_params: Any = None, **_: Any) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("the local MLA core attention takes neither packed sequences nor a bias")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [batch, heads, seq, dim]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                             dropout_p=self.dropout if self.training else 0.0)
        seq, batch = out.size(2), out.size(0)
        return out.permute(2, 0, 1, 3).reshape(seq, batch, -1)
