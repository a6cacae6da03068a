"""Train a tiny megatron.core GPT for a few steps on CPU with gloo; write losses and grad norms.

Run under torchrun with the tree to test first on PYTHONPATH (a cpu-test build):

    torchrun --nproc-per-node N train_tiny.py OUT.json '{"model": "dense", "tp": 1, "pp": 1, "ep": 1}'

Everything is megatron.core's own: parallel_state, the RNG tracker, GPTModel with the local
layer spec, DistributedDataParallel, get_megatron_optimizer, get_forward_backward_func.

On a CUDA host the same script trains on the GPU with NCCL (``benchmarks/bench_moe_flags.py``):
options ``arch`` and ``shape`` resize the model and batch, ``bf16`` trains in bf16, and
``timing_warmup`` (steps not timed) adds step time, tokens/s and peak memory to the output.
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

MODELS = {
    # Llama-style: RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases
    "dense": dict(num_layers=4, hidden_size=64, num_attention_heads=8, num_query_groups=2, ffn_hidden_size=128),
    # Mixtral-style: the same, with 4 experts and top-2 routing in every layer
    "moe": dict(num_layers=2, hidden_size=64, num_attention_heads=8, num_query_groups=2, ffn_hidden_size=96,
                num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=96, moe_aux_loss_coeff=1e-2,
                moe_router_load_balancing_type="aux_loss", moe_token_dispatcher_type="alltoall"),
    # DeepSeek-V2-Lite-style: multi-latent attention (no q LoRA, like V2-Lite), 4 routed experts
    # of which 2 per token, a shared expert, softmax routing with aux loss
    "deepseek": dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=96,
                     multi_latent_attention=True, q_lora_rank=None, kv_lora_rank=32, qk_head_dim=16,
                     qk_pos_emb_head_dim=8, v_head_dim=16, rope_type="rope",
                     num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=48, moe_shared_expert_intermediate_size=48,
                     moe_aux_loss_coeff=1e-2, moe_router_load_balancing_type="aux_loss",
                     moe_token_dispatcher_type="alltoall"),
}
#: tokens per sequence, sequences per step and per microbatch; a run may override any of them
SHAPE = {"vocab": 128, "seq": 16, "global_batch": 8, "micro_batch": 2}


def main(out: str, opts: dict) -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    # on CUDA some ops megatron uses (scatter_add_ in unpermute) have no deterministic kernel:
    # warn there instead of failing; on CPU every op is deterministic
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    tp, pp, ep = opts.get("tp", 1), opts.get("pp", 1), opts.get("ep", 1)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, expert_model_parallel_size=ep
    )
    seed = opts.get("seed", 1234)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)

    arch = {**MODELS[opts["model"]], **opts.get("arch", {})}
    shape = {**SHAPE, **opts.get("shape", {})}
    dtype = torch.bfloat16 if opts.get("bf16") else torch.float32
    config_class = MLATransformerConfig if arch.get("multi_latent_attention") else TransformerConfig
    config = config_class(
        **arch,
        **opts.get("config", {}),
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=bool(opts.get("bf16")),
        use_cpu_initialization=not cuda,
        perform_initialization=True,
    )
    spec = get_gpt_layer_local_spec(num_experts=arch.get("num_moe_experts"), normalization="RMSNorm",
                                    multi_latent_attention=bool(arch.get("multi_latent_attention")))
    if arch.get("multi_latent_attention"):
        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
        # upstream 0.16.1 sets multi_latent_attention.HAVE_TE when the TE *extension module*
        # imports, which it does without TE (its classes are then mocks), and isinstance() on them
        # fails; on a host without TE the right value is False
        import megatron.core.extensions.transformer_engine as te_ext
        import megatron.core.transformer.multi_latent_attention as mla

        mla.HAVE_TE = mla.HAVE_TE and te_ext.HAVE_TE
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=shape["vocab"],
        max_sequence_length=shape["seq"],
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        position_embedding_type="none" if arch.get("multi_latent_attention") else "rope",
        share_embeddings_and_output_weights=False,
    )
    if cuda:  # as Megatron's get_model does: some weights (the MoE router's) are made on the CPU
        model.cuda(torch.cuda.current_device())
    if opts.get("save_init") and torch.distributed.get_rank() == 0:
        torch.save(model.state_dict(), opts["save_init"])
    if opts.get("load_init"):
        load_reference_weights(model, torch.load(opts["load_init"]), config, parallel_state)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False)
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    # what Megatron's trainer wires up: data-parallel (and embedding, layernorm) grad reduction
    # at the end of each forward_backward, and no reduction on the earlier microbatches
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = model.no_sync
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=opts.get("lr", 1e-2), weight_decay=0.0, clip_grad=1.0, bf16=bool(opts.get("bf16")), fp16=False,
                        use_distributed_optimizer=False),
        [model],
    )

    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    per_rank = shape["global_batch"] // dp
    micro = shape["micro_batch"]
    num_microbatches = per_rank // micro
    step_func = partial(forward_step, shape["seq"], "cuda" if cuda else "cpu")
    warmup, step_times = opts.get("timing_warmup"), []
    data = torch.Generator().manual_seed(99)
    forward_backward = get_forward_backward_func()
    losses, grad_norms = [], []
    for step in range(opts.get("steps", 5)):
        if warmup is not None and step == warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        tokens = batch_of_progressions(data, shape)
        mine = tokens[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        batches = iter([mine[i:i + micro] for i in range(0, per_rank, micro)])
        model.zero_grad_buffer()
        optimizer.zero_grad()
        step_losses = forward_backward(
            forward_step_func=step_func,
            data_iterator=batches,
            model=[model],
            num_microbatches=num_microbatches,
            seq_length=shape["seq"],
            micro_batch_size=micro,
            forward_only=False,
        )
        _, grad_norm, _ = optimizer.step()
        losses.append(average_loss(step_losses, parallel_state))
        grad_norms.append(float(grad_norm))
        if warmup is not None and step >= warmup:
            step_times.append(time.perf_counter() - start)  # the loss read-out above synchronises
    result = {"losses": losses, "grad_norms": grad_norms, "world": torch.distributed.get_world_size(),
              # the classes the layers' MLPs were built as (flags may swap the MoE layer)
              "mlp_classes": sorted({f"{type(layer.mlp).__module__}.{type(layer.mlp).__qualname__}"
                                     for layer in model.module.decoder.layers})}
    if step_times:
        mean = sum(step_times) / len(step_times)
        result.update(step_ms=1000 * mean, tokens_per_s=shape["global_batch"] * shape["seq"] / mean,
                      peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)
    if torch.distributed.get_rank() == 0:
        with open(out, "w") as fh:
            json.dump(result, fh)
    torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
    torch.distributed.destroy_process_group()


class SDPACoreAttention(torch.nn.Module):
    """Causal softmax attention with torch SDPA, standing in for TransformerEngine's on CPU.

    megatron's local ``DotProductAttention`` does not take ``k_channels``/``v_channels``, so the
    local layer spec cannot build multi-latent attention (0.16.1); TE's attention can, and this
    module takes the same arguments. Layout: [seq, batch, heads, dim] in, [seq, batch, heads*dv] out.
    """

    def __init__(self, config, layer_number, attn_mask_type, attention_type=None, softmax_scale=None,
                 k_channels=None, v_channels=None, cp_comm_type=None, pg_collection=None, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__()
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, packed_seq_params=None, attn_mask_type=None, **kwargs):  # type: ignore[no-untyped-def]
        if packed_seq_params is not None:
            raise NotImplementedError("packed sequences are not used in these tests")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # -> [b, h, s, d]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)


def load_reference_weights(model, reference, config, parallel_state) -> None:  # type: ignore[no-untyped-def]
    """Copy a single-process model's initial weights into this rank's part of the model.

    Megatron initialises pipeline stages and expert-parallel ranks from different points of the
    random stream, so PP=2 or EP=2 starts from other weights than PP=1. To compare training, every
    layout starts from the PP=1, EP=1 weights: local layer i is global layer i + offset, local
    expert j on expert-parallel rank r is global expert r * experts_per_rank + j.
    """
    if parallel_state.get_tensor_model_parallel_world_size() != 1:
        raise ValueError("reference weights are for TP=1 layouts (TP=2 already initialises identically)")
    layers = model.decoder.layers
    offset = layers[0].layer_number - 1 if len(layers) else 0
    local_experts = (config.num_moe_experts or 0) // parallel_state.get_expert_model_parallel_world_size()
    expert_offset = parallel_state.get_expert_model_parallel_rank() * local_experts
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not torch.is_tensor(tensor) or name.endswith("_extra_state"):
                continue
            parts = name.split(".")
            if parts[:2] == ["decoder", "layers"]:
                parts[2] = str(int(parts[2]) + offset)
            if "local_experts" in parts:
                i = parts.index("local_experts") + 1
                parts[i] = str(int(parts[i]) + expert_offset)
            tensor.copy_(reference[".".join(parts)])


def batch_of_progressions(generator: torch.Generator, shape: dict) -> torch.Tensor:  # type: ignore[type-arg]
    """Sequences ``start, start+d, start+2d, … (mod vocab)``: learnable in a few steps."""
    start = torch.randint(0, shape["vocab"], (shape["global_batch"], 1), generator=generator)
    step = torch.randint(1, 4, (shape["global_batch"], 1), generator=generator)
    return (start + step * torch.arange(shape["seq"] + 1)) % shape["vocab"]


def forward_step(seq, device, data_iterator, model):  # type: ignore[no-untyped-def]
    batch = next(data_iterator).to(device)
    tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    positions = torch.arange(seq, device=device).unsqueeze(0).expand_as(tokens)
    output = model(tokens, positions, attention_mask=None, labels=labels)
    return output, partial(loss_func, labels)


def loss_func(labels, output_tensor):  # type: ignore[no-untyped-def]
    loss = output_tensor.float().mean()
    return loss, {"lm loss": loss.detach().clone()}  # the schedule scales `loss` in place


def average_loss(step_losses, parallel_state) -> float:  # type: ignore[no-untyped-def]
    """The step's loss, averaged over microbatches and data-parallel ranks, known on every rank."""
    value = torch.zeros(1, dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")  # NCCL: on GPU
    if parallel_state.is_pipeline_last_stage():
        value += sum(float(d["lm loss"]) for d in step_losses) / len(step_losses)
        torch.distributed.all_reduce(value, group=parallel_state.get_data_parallel_group())
        value /= parallel_state.get_data_parallel_world_size()
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return float(value)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
