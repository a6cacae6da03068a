"""Process group, parallel state and seeds; the model chunks in DDP; optimizer and schedule.

All megatron.core's own parts: ``parallel_state``, the model-parallel RNG tracker, ``GPTModel``
(through :mod:`primus_runtime.model.builder`), ``DistributedDataParallel``,
``get_megatron_optimizer`` (the distributed optimizer with ``use_distributed_optimizer``) and
``OptimizerParamScheduler``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from primus_runtime.errors import ConfigError
from primus_runtime.trainer import fatal
from primus_runtime.trainer.options import Layout, Schedule

log = logging.getLogger("primus_runtime.trainer")


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(params: Mapping[str, Any]) -> tuple[int, int]:
    """Join the torchrun process group (NCCL/RCCL on GPUs, gloo on CPU); return (rank, world)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = params["distributed_backend"]
    else:
        backend = "gloo"
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:  # a plain `python -m primus_runtime train`: one process
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
        torch.distributed.init_process_group(
            backend, timeout=timedelta(minutes=int(params["distributed_timeout_minutes"])))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    fatal.watch(rank, world)  # from here on, one rank's failure ends every rank with its message
    return rank, world


def init_parallel_state(layout: Layout, params: Mapping[str, Any]) -> None:
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vp, context_parallel_size=layout.cp,
        expert_model_parallel_size=layout.ep, expert_tensor_parallel_size=layout.etp,
        distributed_timeout_minutes=int(params["distributed_timeout_minutes"]),
    )


def set_seeds(seed: int) -> None:
    """As Megatron-LM: one seed per pipeline stage; the tracker derives the TP/EP streams."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


@dataclass
class Model:
    chunks: list[Any]  # DDP-wrapped GPTModel, one per virtual pipeline stage
    config: Any  # the TransformerConfig
    padded_vocab: int
    spec: str


def build_model(params: Mapping[str, Any], layout: Layout) -> Model:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    from primus_runtime.model import portable
    from primus_runtime.model.builder import build_gpt_model, have_transformer_engine, padded_vocab_size
    from primus_runtime.model.config_map import transformer_config

    cuda = torch.cuda.is_available()
    params = portable.resolve(params, have_te=have_transformer_engine())
    config = transformer_config(params, use_cpu_initialization=not cuda, perform_initialization=True)
    chunks = []
    for stage in range(layout.vp or 1):
        vp_stage = stage if layout.vp else None
        model = build_gpt_model(
            params, config,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage)
        for param in model.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
        if cuda:  # some weights (the MoE router's) are made on the CPU
            model.cuda(torch.cuda.current_device())
        if config.bf16 or config.fp16:
            # as Megatron-LM's get_model: every parameter in model precision, norms included (torch's
            # fused RMSNorm/LayerNorm kernels need the weight in the input's dtype); the optimizer
            # keeps the fp32 main copy
            model = Float16Module(config, model)
        chunks.append(model)
    if params.get("patch_zero_bubble") and params.get("overlap_grad_reduce"):
        # the zero-bubble schedule's deferred weight gradients would miss a bucket reduced during B
        raise ConfigError("patch_zero_bubble needs overlap_grad_reduce: false (gradients are reduced in "
                          "finalize_model_grads, after the last weight-gradient pass)")
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=bool(params.get("accumulate_allreduce_grads_in_fp32")) or not (config.bf16 or config.fp16),
        overlap_grad_reduce=bool(params.get("overlap_grad_reduce")),
        overlap_param_gather=bool(params.get("overlap_param_gather")),
        use_distributed_optimizer=bool(params.get("use_distributed_optimizer")),
        check_for_nan_in_grad=True,
    )
    wrapped = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                       disable_bucketing=index > 0)
               for index, chunk in enumerate(chunks)]
    vocab = padded_vocab_size(params.get("vocab_size"), int(params["make_vocab_size_divisible_by"]),
                              layout.tp)
    spec = "TransformerEngine layer spec" if have_transformer_engine() else "local layer spec"
    return Model(wrapped, config, vocab, spec)


def build_optimizer(params: Mapping[str, Any], model: Model) -> Any:
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg = model.config
    opt_config = OptimizerConfig(
        optimizer=str(params["optimizer"]), lr=float(params["lr"]), min_lr=float(params["min_lr"]),
        weight_decay=float(params["weight_decay"]), adam_beta1=float(params["adam_beta1"]),
        adam_beta2=float(params["adam_beta2"]), adam_eps=float(params["adam_eps"]),
        sgd_momentum=float(params["sgd_momentum"]), clip_grad=float(params["clip_grad"]),
        bf16=cfg.bf16, fp16=cfg.fp16, params_dtype=cfg.params_dtype,
        loss_scale=params.get("loss_scale"), initial_loss_scale=float(params["initial_loss_scale"]),
        min_loss_scale=float(params["min_loss_scale"]),
        loss_scale_window=float(params["loss_scale_window"]), hysteresis=int(params["hysteresis"]),
        use_distributed_optimizer=bool(params.get("use_distributed_optimizer")),
        overlap_param_gather=bool(params.get("overlap_param_gather")),
        log_num_zeros_in_grad=False,
    )
    optimizer = get_megatron_optimizer(opt_config, model.chunks)
    # what Megatron-LM's training loop wires into the config before the first step
    cfg.grad_scale_func = optimizer.scale_loss
    cfg.finalize_model_grads_func = finalize_model_grads
    cfg.timers = None
    no_sync = [chunk.no_sync for chunk in model.chunks]
    cfg.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    if params.get("overlap_grad_reduce"):
        grad_sync = [chunk.start_grad_sync for chunk in model.chunks]
        cfg.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
    if params.get("overlap_param_gather") and params.get("use_distributed_optimizer"):
        param_sync = [chunk.start_param_sync for chunk in model.chunks]
        cfg.param_sync_func = param_sync[0] if len(param_sync) == 1 else param_sync
    return optimizer


def build_scheduler(optimizer: Any, schedule: Schedule) -> Any:
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer, init_lr=schedule.init_lr, max_lr=schedule.max_lr, min_lr=schedule.min_lr,
        lr_warmup_steps=schedule.warmup_steps, lr_decay_steps=schedule.decay_steps,
        lr_decay_style=schedule.decay_style, start_wd=schedule.start_wd, end_wd=schedule.end_wd,
        wd_incr_steps=schedule.wd_incr_steps, wd_incr_style=schedule.wd_incr_style,
        use_checkpoint_opt_param_scheduler=True, override_opt_param_scheduler=False,
    )
