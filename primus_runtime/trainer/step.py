"""One training step and one evaluation, through megatron.core's pipeline schedules.

The forward step feeds a microbatch to the model chunk, which returns per-token losses; the
loss function sums them under the loss mask and returns ``(sum, tokens, {"lm loss": [sum,
tokens]})``, so the schedule averages per token and the reported loss is token-weighted over
microbatches and data-parallel ranks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from primus_runtime.trainer import pp_data
from primus_runtime.trainer.options import Batches


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def loss_func(loss_mask: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    mask = loss_mask.view(-1).float()
    total = torch.sum(output.view(-1).float() * mask)
    tokens = mask.sum().to(torch.int)
    report = torch.cat([total.detach().view(1), tokens.detach().float().view(1)])
    return total, tokens, {"lm loss": report}


def forward_step(device: torch.device, data_iterator: Iterator[dict] | None, model: Any) -> tuple[Any, Any]:
    """What the schedule calls per microbatch and model chunk; middle pipeline stages get no data."""
    batch = _to_device(next(data_iterator), device) if data_iterator is not None else None
    if batch is None:
        output = model(None, None, None)
        return output, partial(loss_func, None)
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"])


@dataclass
class StepResult:
    loss: float | None  # token-weighted over the step; None where this rank does not see it
    grad_norm: float | None
    skipped: bool


def reduce_losses(outputs: list[dict], dp_group: Any) -> float | None:
    """Token-weighted mean over microbatches and data-parallel ranks (on the last stage only)."""
    if not outputs:
        return None
    total = torch.stack([o["lm loss"] for o in outputs]).sum(dim=0)
    torch.distributed.all_reduce(total, group=dp_group)
    return float(total[0] / total[1].clamp(min=1))


def train_step(chunks: list[Any], optimizer: Any, scheduler: Any, iterators: Any, batches: Batches,
               seq_length: int, device: torch.device) -> StepResult:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    with pp_data.iteration(get_model_config(chunks[0])):
        outputs = get_forward_backward_func()(
            forward_step_func=partial(forward_step, device), data_iterator=iterators, model=chunks,
            num_microbatches=batches.num_microbatches, seq_length=seq_length,
            micro_batch_size=batches.micro_batch, decoder_seq_length=seq_length, forward_only=False)
    updated, grad_norm, _ = optimizer.step()
    if updated:
        scheduler.step(increment=batches.global_batch)
    loss = None
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        loss = reduce_losses(outputs, parallel_state.get_data_parallel_group(with_context_parallel=True))
    return StepResult(loss, None if grad_norm is None else float(grad_norm), not updated)


def timed_train_step(chunks: list[Any], optimizer: Any, scheduler: Any, iterators: Any, batches: Batches,
                     seq_length: int, device: torch.device) -> tuple[StepResult, float]:
    """:func:`train_step` and its wall time in seconds, the device synchronised at both ends."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    result = train_step(chunks, optimizer, scheduler, iterators, batches, seq_length, device)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - began


def evaluate(chunks: list[Any], iterators: Any, batches: Batches, eval_iters: int, seq_length: int,
             device: torch.device) -> float | None:
    """Mean validation loss over ``eval_iters`` global batches (on the last stage; None elsewhere)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        chunk.eval()
    outputs: list[dict] = []
    with torch.no_grad():
        for _ in range(eval_iters):
            outputs += get_forward_backward_func()(
                forward_step_func=partial(forward_step, device), data_iterator=iterators, model=chunks,
                num_microbatches=batches.num_microbatches, seq_length=seq_length,
                micro_batch_size=batches.micro_batch, decoder_seq_length=seq_length, forward_only=True)
    for chunk in chunks:
        chunk.train()
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return reduce_losses(outputs, parallel_state.get_data_parallel_group(with_context_parallel=True))
    return None
