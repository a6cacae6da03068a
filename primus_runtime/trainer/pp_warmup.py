"""``pp_warmup`` (spec M8): one synthetic forward and backward per model chunk on every pipeline
stage at once, before training, so that lazy initialisation (kernels, workspaces, allocator
pools) happens in parallel rather than stage after stage in the first iteration.

No point-to-point traffic: a stage that is not first gets random input activations, one that
is not last back-propagates zero gradients, the first gets random token ids. Gradient sync is
suppressed (``no_sync``) and nothing is stepped. Afterwards everything the training could see
is put back: all RNG states, the gradient buffers and ``.grad``, the optimizer's gradients,
the MoE auxiliary-loss tracker and token counts, and each module's ``is_first_microbatch``.
Training losses are the same with and without it. A no-op without pipeline parallelism.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from primus_runtime.trainer import rng as rng_states
from primus_runtime.trainer.config import WarmupConfig
from primus_runtime.trainer.options import Batches, Layout

log = logging.getLogger("primus_runtime.trainer")


def _activation_shape(config: Any, layout: Layout, seq_length: int, micro_batch: int) -> tuple[int, int, int]:
    seq = seq_length // layout.cp
    if config.sequence_parallel:
        seq //= layout.tp
    return seq, micro_batch, config.hidden_size


def run(cfg: WarmupConfig, chunks: list[Any], optimizer: Any, config: Any, layout: Layout, batches: Batches,
        seq_length: int, vocab: int, device: torch.device) -> None:
    """Warm every stage up when ``pp_warmup`` is on; nothing otherwise."""
    if not cfg.pp_warmup:
        return
    if layout.pp == 1:
        log.info("pp_warmup: no pipeline parallelism, nothing to warm up")
        return
    from megatron.core import parallel_state
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker
    from megatron.core.utils import get_attr_wrapped_model

    start = time.perf_counter()
    rng = rng_states.capture()
    first_microbatch = {m: m.is_first_microbatch for c in chunks for m in c.modules() if hasattr(m, "is_first_microbatch")}
    shape = _activation_shape(config, layout, seq_length, batches.micro_batch)
    for index, chunk in enumerate(chunks):
        vp_stage = index if len(chunks) > 1 else None
        first = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        last = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        set_input = get_attr_wrapped_model(chunk, "set_input_tensor")
        activations = None
        if not first:
            activations = torch.randn(shape, dtype=config.pipeline_dtype, device=device, requires_grad=True)
        set_input(activations)
        mbs, seq = batches.micro_batch, seq_length
        tokens = torch.randint(0, vocab, (mbs, seq), device=device)  # random: a constant input collapses MoE routing
        positions = torch.arange(seq, device=device).unsqueeze(0).expand(mbs, -1)
        with chunk.no_sync():
            output = chunk(tokens, positions, None, labels=tokens if last else None)
            if last:
                output.float().sum().backward()
            else:
                torch.autograd.backward(output, grad_tensors=torch.zeros_like(output))
        set_input(None)
        del output, activations
    # put back everything training could see
    rng_states.restore(rng)
    for chunk in chunks:
        chunk.zero_grad_buffer()
        for param in chunk.parameters():
            param.grad = None
        for module in chunk.modules():
            counts = getattr(module, "local_tokens_per_expert", None)
            if isinstance(counts, torch.Tensor):
                counts.zero_()
    for module, value in first_microbatch.items():
        module.is_first_microbatch = value
    optimizer.zero_grad()
    clear_aux_losses_tracker()
    torch.distributed.barrier()
    log.info("pp_warmup: one synthetic forward/backward per model chunk on every stage took %.1f ms",
             1000 * (time.perf_counter() - start))
