"""How Hugging Face tensors become the parameters of megatron.core's ``GPTModel``, and back.

A :class:`Rule` ties one parameter of the whole model (TP = PP = EP = 1, the local layer spec,
sequential experts: the names :mod:`.layout` reads) to the Hugging Face tensors it is made of,
with the two exact, lossless functions between them: concatenations, the grouped
query/key/value interleave and vocabulary padding. Each Hugging Face tensor belongs to one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Join = Callable[[Sequence[torch.Tensor]], torch.Tensor]
Split = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class Rule:
    mcore: str
    hf: tuple[str, ...]
    join: Join  # Hugging Face tensors (in ``hf`` order) -> the parameter
    split: Split  # the parameter -> Hugging Face tensors (in ``hf`` order)


def copy(mcore: str, hf: str) -> Rule:
    return Rule(mcore, (hf,), lambda ts: ts[0], lambda t: [t])


def concat(mcore: str, *hf: str) -> Rule:
    """``[a; b; ...]`` along rows (SwiGLU's gate and up projections make ``linear_fc1``)."""

    def split(t: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.chunk(t, len(hf), dim=0))

    return Rule(mcore, tuple(hf), lambda ts: torch.cat(list(ts), dim=0), split)


def padded_rows(mcore: str, hf: str, vocab: int, padded: int) -> Rule:
    """The embedding or output layer: megatron's padded vocabulary has zero rows after ``vocab``."""

    def join(ts: Sequence[torch.Tensor]) -> torch.Tensor:
        (t,) = ts
        return torch.cat([t, t.new_zeros((padded - t.shape[0], *t.shape[1:]))]) if padded > t.shape[0] else t

    return Rule(mcore, (hf,), join, lambda t: [t[:vocab]])


def grouped_qkv(mcore: str, q: str, k: str, v: str, heads: int, groups: int, head_dim: int) -> Rule:
    """megatron's ``linear_qkv``: per query group, that group's query heads, then its key, then its value."""
    per_group = heads // groups

    def join(ts: Sequence[torch.Tensor]) -> torch.Tensor:
        wq, wk, wv = ts
        hidden = wq.shape[-1]
        return torch.cat([wq.reshape(groups, per_group * head_dim, hidden), wk.reshape(groups, head_dim, hidden),
                          wv.reshape(groups, head_dim, hidden)], dim=1).reshape(-1, hidden)

    def split(t: torch.Tensor) -> list[torch.Tensor]:
        hidden = t.shape[-1]
        wq, wk, wv = t.reshape(groups, (per_group + 2) * head_dim, hidden).split(
            [per_group * head_dim, head_dim, head_dim], dim=1)
        return [wq.reshape(-1, hidden), wk.reshape(-1, hidden), wv.reshape(-1, hidden)]

    return Rule(mcore, (q, k, v), join, split)

