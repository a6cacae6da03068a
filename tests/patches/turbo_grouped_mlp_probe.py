"""Run the Turbo grouped experts of whatever megatron.core is on ``sys.path`` and report what they did, as JSON.

Used by tests/patches/test_use_turbo_grouped_mlp.py in a subprocess against the patched cpu-test
tree. One process runs every check of a mode and prints one JSON line, ``RESULT {...}``.

usage: python turbo_grouped_mlp_probe.py MODE [DIR]
modes:
  experts     TorchGroupedMLP against SequentialMLP built from the same seed (the MoE layer of the
              local spec with the flags off and on): initial weights, outputs, gradients of the
              tokens, probabilities and weights, for token counts with empty experts, one expert,
              no tokens; SwiGLU, GeLU, the fused SwiGLU, probabilities on the input, one local
              expert, a width grouped_mm cannot take (the loop); which kernel ran; and the whole
              MoE layer (router, dispatcher, experts) off against on
  syncs       which tensor-to-host conversions a forward makes (grouped_mm: none; loop: tolist)
  checkpoint  dist_checkpointing save and load (torch_dist, one gloo rank, in DIR) between
              SequentialMLP and TorchGroupedMLP in both directions, with and without GLU, with
              singleton_local_shards, and the optimizer-state-shaped round trip of the factories
  refusals    the config-time refusals, the alias, and the flag without enable_primus_turbo
  backend     which experts class is chosen (run with PRIMUS_TURBO_BACKEND or a stand-in
              primus_turbo on the path); with the stand-in, what its grouped_gemm was called with
  dispatch    select_kernel over devices, dtypes, compute capabilities and widths (the selection
              logic only: no CUDA device runs here)
  cuda        GPU only: the experts of ``experts`` moved to the GPU in bf16, SequentialMLP against
              torch's CUDA grouped_mm (empty experts, no tokens), the kernel chosen, and whether
              the grouped forward and backward pass ``torch.cuda.set_sync_debug_mode("error")``
"""

from __future__ import annotations

import contextlib
import json
import sys

import torch
import torch.nn.functional as F
from probe_common import start_single_process

HIDDEN, FFN, EXPERTS = 32, 24, 4
TURBO_FLAGS = {"enable_primus_turbo": True, "use_turbo_grouped_mlp": True}
#: token counts per expert: empty experts first, in the middle and last; all to one; none at all
COUNTS = {"mixed": [5, 0, 7, 3], "empty_ends": [0, 6, 4, 0], "one_expert": [0, 0, 9, 0], "no_tokens": [0, 0, 0, 0]}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:
        return 0.0 if a.shape == b.shape else float("inf")
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def config(**overrides):
    from megatron.core.transformer.transformer_config import TransformerConfig

    settings = dict(num_layers=1, hidden_size=HIDDEN, num_attention_heads=4, ffn_hidden_size=FFN,
                    num_moe_experts=EXPERTS, moe_router_topk=2, moe_aux_loss_coeff=0.0,
                    moe_router_load_balancing_type="none", moe_token_dispatcher_type="alltoall",
                    add_bias_linear=False, gated_linear_unit=True, activation_func=F.silu,
                    use_cpu_initialization=True, hidden_dropout=0.0)
    settings.update(overrides)
    return TransformerConfig(**settings)


def moe_layer(cfg, seed: int = 1234):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.spec_utils import build_module

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    spec = get_gpt_layer_local_spec(num_experts=cfg.num_moe_experts)
    return build_module(spec.submodules.mlp, config=cfg)


def stacked(experts, which: str) -> torch.Tensor:
    """SequentialMLP's per-expert weights (or their gradients) stacked like the grouped experts' parameters."""
    if hasattr(experts, "weight1"):
        w = experts.weight1 if which == "fc1" else experts.weight2
        return w
    return torch.stack([getattr(e, f"linear_{which}").weight for e in experts.local_experts])


def stacked_grad(experts, which: str) -> torch.Tensor:
    if hasattr(experts, "weight1"):
        return (experts.weight1 if which == "fc1" else experts.weight2).grad
    return torch.stack([getattr(e, f"linear_{which}").weight.grad for e in experts.local_experts])


def run_experts(experts, counts: list[int], seed: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32,
                checked=contextlib.nullcontext):
    """One forward and backward over ``counts`` tokens per expert: inputs drawn on the CPU in fp32
    (the same numbers on any device), then moved, all before the forward; the counts tensor lives
    on ``device``. The forward and backward alone run inside ``checked()``."""
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(counts)
    hidden = torch.randn(tokens, HIDDEN, generator=gen).to(device, dtype).requires_grad_()
    probs = torch.rand(tokens, generator=gen).to(device, dtype).requires_grad_()
    tokens_per_expert = torch.tensor(counts, device=device)
    weight = torch.randn(tokens, HIDDEN, generator=gen).to(device, dtype)
    with checked():
        out, bias = experts(hidden, tokens_per_expert, probs)
        (out * weight).sum().backward()
    return out.detach(), hidden.grad, probs.grad, bias


def compare(cfg_overrides: dict, counts: list[int], device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """SequentialMLP against the grouped experts, both built in fp32 from the same seed and then
    moved to ``device`` and ``dtype``."""
    from megatron.core._primus.turbo import grouped_mlp

    upstream = moe_layer(config(**cfg_overrides)).experts.to(device, dtype)
    turbo = moe_layer(config(**cfg_overrides, **TURBO_FLAGS)).experts.to(device, dtype)
    init = max(float((stacked(turbo, w) - stacked(upstream, w)).abs().max()) for w in ("fc1", "fc2"))
    capability = tuple(torch.cuda.get_device_capability()) if device == "cuda" else None
    kernel = [grouped_mlp.select_kernel("torch", device, w.dtype, capability, w.size(2), w.size(1))
              for w in (turbo.weight1, turbo.weight2)]
    want = run_experts(upstream, counts, device=device, dtype=dtype)
    got = run_experts(turbo, counts, device=device, dtype=dtype)
    return {"types": [type(upstream).__name__, type(turbo).__name__], "kernel": kernel, "init": init,
            "output": rel(got[0], want[0]), "grad_hidden": rel(got[1], want[1]), "grad_probs": rel(got[2], want[2]),
            "bias": got[3], "shape": list(got[0].shape),
            "grad_weights": max(rel(stacked_grad(turbo, w), stacked_grad(upstream, w)) for w in ("fc1", "fc2")),
            "empty_expert_grad_zero": all(
                float(stacked_grad(turbo, w)[e].abs().max()) == 0.0
                for w in ("fc1", "fc2") for e, n in enumerate(counts) if n == 0)}


def experts() -> dict:
    start_single_process()
    out: dict = {}
    for name, counts in COUNTS.items():
        out[f"swiglu_{name}"] = compare({}, counts)
    out["gelu_mixed"] = compare({"gated_linear_unit": False, "activation_func": F.gelu}, COUNTS["mixed"])
    out["fused_swiglu_mixed"] = compare({"bias_activation_fusion": True}, COUNTS["mixed"])
    out["probs_on_input_mixed"] = compare({"moe_apply_probs_on_input": True, "moe_router_topk": 1,
                                            "moe_router_pre_softmax": True}, COUNTS["mixed"])
    out["clamped_offset_glu"] = compare({"activation_func_clamp_value": 0.5, "glu_linear_offset": 1.0},
                                        COUNTS["mixed"])
    # ffn 5 (fc1 10 wide): 40- and 20-byte float32 rows, which grouped_mm refuses: the per-expert loop
    out["loop_width_mixed"] = compare({"ffn_hidden_size": 5}, COUNTS["mixed"])
    out["loop_width_no_tokens"] = compare({"ffn_hidden_size": 5}, COUNTS["no_tokens"])
    out["one_local_expert"] = compare({"num_moe_experts": 1, "moe_router_topk": 1,
                                        "moe_router_pre_softmax": True}, [9])
    out["layer"] = layer()
    return out


def layer() -> dict:
    """The whole MoE layer (router, alltoall dispatcher, experts, combine), flags off against on."""
    results = []
    for cfg in (config(), config(**TURBO_FLAGS)):
        module = moe_layer(cfg)
        gen = torch.Generator().manual_seed(11)
        hidden = torch.randn(6, 3, HIDDEN, generator=gen, requires_grad=True)  # [seq, batch, hidden]
        output, _ = module(hidden)
        (output * torch.randn(output.shape, generator=gen)).sum().backward()
        grads = {name: p.grad for name, p in module.named_parameters() if "experts" not in name}
        results.append((output.detach(), hidden.grad, grads, type(module.experts).__name__))
    (want_out, want_grad, want_params, want_type), (got_out, got_grad, got_params, got_type) = results
    return {"types": [want_type, got_type], "output": rel(got_out, want_out), "grad_hidden": rel(got_grad, want_grad),
            "grad_router": max(rel(got_params[k], want_params[k]) for k in want_params)}


def syncs() -> dict:
    """Host conversions of the token counts during one forward and backward, per kernel."""
    from torch.overrides import TorchFunctionMode

    start_single_process()
    host = ("tolist", "item", "__bool__", "__int__", "__index__", "__float__", "cpu", "numpy")

    class Record(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            if name in host:
                self.seen.append(name)
            return func(*args, **(kwargs or {}))

    out = {}
    for name, overrides in (("grouped_mm", {}), ("loop", {"ffn_hidden_size": 5})):
        experts = moe_layer(config(**TURBO_FLAGS, **overrides)).experts
        with Record() as record:
            run_experts(experts, COUNTS["mixed"])
        out[name] = sorted(set(record.seen))
    return out


def checkpoint(folder: str) -> dict:
    from pathlib import Path

    from megatron.core import dist_checkpointing

    start_single_process()
    turbo_flags = {"enable_primus_turbo": True, "use_turbo_grouped_mlp": True}
    out = {}
    cases = (("swiglu", {}), ("gelu", {"gated_linear_unit": False, "activation_func": F.gelu}))
    for glu_name, overrides in cases:
        for singleton in (False, True):
            metadata = {"singleton_local_shards": True} if singleton else None
            for direction, (save_flags, load_flags) in (("sequential_to_grouped", ({}, turbo_flags)),
                                                        ("grouped_to_sequential", (turbo_flags, {})),
                                                        ("grouped_to_grouped", (turbo_flags, turbo_flags))):
                case = f"{glu_name}_{'singleton_' if singleton else ''}{direction}"
                target = Path(folder) / case
                target.mkdir(parents=True)
                saved = moe_layer(config(**overrides, **save_flags), seed=1)
                dist_checkpointing.save(saved.sharded_state_dict(prefix="mlp.", metadata=metadata), str(target))
                loaded = moe_layer(config(**overrides, **load_flags), seed=2)
                before = max(float((stacked(loaded.experts, w) - stacked(saved.experts, w)).abs().max())
                             for w in ("fc1", "fc2"))
                state = dist_checkpointing.load(loaded.sharded_state_dict(prefix="mlp.", metadata=metadata),
                                                str(target))
                loaded.load_state_dict({k[len("mlp."):]: v for k, v in state.items()})
                after = max(float((stacked(loaded.experts, w) - stacked(saved.experts, w)).abs().max())
                            for w in ("fc1", "fc2"))
                probe_in = torch.randn(5, 2, HIDDEN, generator=torch.Generator().manual_seed(3))
                out[case] = {"before": before, "after": after,
                             "output": rel(loaded(probe_in)[0].detach(), saved(probe_in)[0].detach()),
                             "types": [type(saved.experts).__name__, type(loaded.experts).__name__]}
    return out


def refusals() -> dict:
    start_single_process()
    on = {"enable_primus_turbo": True, "use_turbo_grouped_mlp": True}
    cases = {
        "bias": {"add_bias_linear": True},
        "expert_tp": {"expert_tensor_parallel_size": 2, "tensor_model_parallel_size": 2,
                      "sequence_parallel": True},
        "legacy": {"moe_grouped_gemm": True, "moe_use_legacy_grouped_gemm": True},
        "moe_act_recompute": {"moe_grouped_gemm": True, "recompute_granularity": "selective",
                              "recompute_modules": ["moe_act"]},
        "geglu_fusion": {"activation_func": F.gelu, "bias_activation_fusion": True},
    }
    out: dict = {}
    for name, overrides in cases.items():
        try:
            config(**overrides, **on)
            out[name] = "accepted"
        except ValueError as exc:  # the refusal is what is reported
            out[name] = str(exc)
        config(**overrides)  # upstream takes each of these options
    # options a CPU config cannot be built with (FP8 needs TransformerEngine): the check itself
    from megatron.core._primus.turbo.grouped_mlp import refusals as why

    for name, field, value in (("fp8", "fp8", "e4m3"), ("fp4", "fp4", "nvfp4"),
                               ("delay_wgrad", "delay_wgrad_compute", True),
                               ("te_activation", "use_te_activation_func", True)):
        cfg = config()
        setattr(cfg, field, value)
        out[name] = why(cfg, "torch")
        out[f"{name}_on_te"] = why(cfg, "transformer_engine")
    cfg = config()
    cfg.fine_grained_activation_offloading, cfg.offload_modules = True, ["expert_fc1"]
    out["offload"] = why(cfg, "torch")
    alias = config(enable_primus_turbo=True, use_turbo_grouped_gemm=True)
    out["alias"] = [alias.use_turbo_grouped_mlp, type(moe_layer(alias).experts).__name__]
    out["without_enable"] = type(moe_layer(config(use_turbo_grouped_mlp=True)).experts).__name__
    out["off"] = type(moe_layer(config()).experts).__name__
    return out


def backend() -> dict:
    from megatron.core._primus.turbo.backend import backend as chosen

    start_single_process()
    try:
        name = str(chosen())
    except ValueError as exc:
        return {"error": str(exc)}
    experts = moe_layer(config(**TURBO_FLAGS)).experts
    out = {"backend": name, "class": type(experts).__name__}
    if name.startswith("primus_turbo"):
        from primus_turbo.pytorch import ops

        upstream = moe_layer(config()).experts
        got, want = run_experts(experts, COUNTS["mixed"]), run_experts(upstream, COUNTS["mixed"])
        out["calls"] = ops.CALLS
        out["output"] = rel(got[0], want[0])
        out["grad_hidden"] = rel(got[1], want[1])
    return out


@contextlib.contextmanager
def sync_debug_errors():
    """CUDA's sync debug mode at "error" inside the block: a host synchronisation raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def cuda() -> dict:
    """``compare`` on the GPU in bf16, and the grouped experts' and SequentialMLP's forward and
    backward under CUDA's sync debug mode (the error's first line, or None)."""
    start_single_process()
    out: dict = {name: compare({}, COUNTS[name], "cuda", torch.bfloat16) for name in ("mixed", "empty_ends", "no_tokens")}
    out["sync_debug"] = {}
    for name, flags in (("grouped_mm", TURBO_FLAGS), ("sequential", {})):
        experts = moe_layer(config(**flags)).experts.to("cuda", torch.bfloat16)
        try:
            run_experts(experts, COUNTS["mixed"], device="cuda", dtype=torch.bfloat16, checked=sync_debug_errors)
            out["sync_debug"][name] = None
        except RuntimeError as error:
            out["sync_debug"][name] = str(error).splitlines()[0]
    return out


def dispatch() -> dict:
    from megatron.core._primus.turbo.grouped_mlp import select_kernel

    bf16, fp32, fp16, fp64 = torch.bfloat16, torch.float32, torch.float16, torch.float64
    table = {
        "cuda_bf16_sm90": ("torch", "cuda", bf16, (9, 0), 4096, 14336),
        "cuda_bf16_sm80": ("torch", "cuda", bf16, (8, 0), 4096, 14336),
        "cuda_bf16_sm75": ("torch", "cuda", bf16, (7, 5), 4096, 14336),
        "cuda_fp32_sm90": ("torch", "cuda", fp32, (9, 0), 4096, 14336),
        "cuda_fp16_sm90": ("torch", "cuda", fp16, (9, 0), 4096, 14336),
        "cuda_bf16_sm90_odd_width": ("torch", "cuda", bf16, (9, 0), 4096, 14340 + 2),
        "cpu_fp32": ("torch", "cpu", fp32, None, 64, 96),
        "cpu_bf16": ("torch", "cpu", bf16, None, 64, 96),
        "cpu_fp64": ("torch", "cpu", fp64, None, 64, 96),
        "cpu_fp32_odd_width": ("torch", "cpu", fp32, None, 64, 6),
        "primus_turbo_cuda_bf16": ("primus_turbo", "cuda", bf16, (9, 4), 4096, 14336),
    }
    return {name: select_kernel(*args) for name, args in table.items()}


if __name__ == "__main__":
    mode = sys.argv[1]
    modes = {"experts": experts, "syncs": syncs, "refusals": refusals, "backend": backend, "dispatch": dispatch,
             "cuda": cuda, "checkpoint": lambda: checkpoint(sys.argv[2])}
    result = modes[mode]()
    print("RESULT " + json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
