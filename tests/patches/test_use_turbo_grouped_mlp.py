"""enable_primus_turbo + use_turbo_grouped_mlp: MoE experts as one grouped GEMM, flag off is upstream.

The torch path (TorchGroupedMLP) runs here for real, against upstream's SequentialMLP built from
the same seed. On the CPU torch 2.13 runs ``grouped_mm`` in float32 (tried: forward and backward,
empty groups included, rows a multiple of 16 bytes), so both the grouped_mm kernel and the
per-expert loop (widths grouped_mm refuses) are exercised. Tolerance: the spec's fp32 1e-5
relative; each expert's rows go through one matmul of at most 32-wide dot products either way
(seen: bit-identical with grouped_mm, 3e-8 with the loop, whose F.linear is another kernel than
upstream's linear layer).

The CUDA grouped_mm branch runs only on a GPU host (``test_cuda_grouped_mm_matches_sequential_mlp_in_bf16``,
the ``gpu`` marker; CI deselects it); on CPU ``test_cuda_grouped_mm_dispatch_selection_logic_only``
checks only which kernel would be chosen. Never run here: the Primus-Turbo kernel (a DISPATCH test against a
stand-in package written by this test: what is tested is which class is built and what it passes,
never the Primus-Turbo kernel) and TransformerEngine's TEGroupedMLP (not installed: its branch is
tested only for being refused when forced).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.patches.turbo_probes import probe_result, write_standin

pytestmark = pytest.mark.slow

FP32 = 1e-5
#: bf16 keeps 8 significant bits. Both paths accumulate in fp32 and round to bf16 at the same points
#: (fc1 output, activation, fc2 output, and the matching gradients), so a different summation
#: order moves each rounded value by at most one unit in the last place (2**-8 relative); a chain
#: of at most four such roundings bounds the relative (norm) difference by 4 * 2**-8.
BF16 = 4 * 2.0**-8

STANDIN_OPS = '''
"""A stand-in for Primus-Turbo's ops, written by tests/patches/test_use_turbo_grouped_mlp.py."""
import torch
import torch.nn.functional as F

CALLS = []


def grouped_gemm(a, b, group_lens, trans_b=False):
    CALLS.append({"a": list(a.shape), "b": list(b.shape), "group_lens": group_lens.tolist(),
                  "group_lens_dtype": str(group_lens.dtype), "trans_b": trans_b})
    parts = a.split(group_lens.tolist())
    return torch.cat([F.linear(p, w) if trans_b else p @ w for p, w in zip(parts, b)])
'''


def probe(tree: Path, mode: str, *args: str, extra_path: Path | None = None,
          env: dict[str, str] | None = None, fresh: bool = False) -> dict:
    return probe_result("turbo_grouped_mlp_probe.py", tree, mode, *args, extra_path=extra_path, env=env, fresh=fresh)


@pytest.fixture(scope="module")
def patched(cpu_trees: dict[str, Path]) -> Path:
    return cpu_trees["patched"]


def test_grouped_experts_match_sequential_mlp_forward_and_gradients(patched: Path) -> None:
    got = probe(patched, "experts")
    layer = got.pop("layer")
    for name, case in got.items():
        assert case["types"] == ["SequentialMLP", "TorchGroupedMLP"], name
        assert case["init"] == 0.0, name  # same numbers from the same random streams, in the same order
        for what in ("output", "grad_hidden", "grad_probs", "grad_weights"):
            assert case[what] < FP32, (name, what, case)
        assert case["empty_expert_grad_zero"] and case["bias"] is None, (name, case)
    assert got["swiglu_no_tokens"]["shape"] == [0, 32]
    assert got["swiglu_mixed"]["kernel"] == got["gelu_mixed"]["kernel"] == ["grouped_mm", "grouped_mm"]
    assert got["loop_width_mixed"]["kernel"] == got["loop_width_no_tokens"]["kernel"] == ["loop", "loop"]
    assert layer["types"] == ["SequentialMLP", "TorchGroupedMLP"]
    assert layer["output"] < FP32 and layer["grad_hidden"] < FP32 and layer["grad_router"] < FP32, layer


def test_grouped_mm_path_never_reads_the_token_counts_on_the_host(patched: Path) -> None:
    """The offsets are a device cumsum: no tolist/item/int of a tensor in forward or backward; the
    per-expert loop does read them (tolist), which shows the check sees such reads."""
    assert probe(patched, "syncs") == {"grouped_mm": [], "loop": ["tolist"]}


def test_checkpoints_move_between_sequential_mlp_and_grouped_experts(patched: Path, tmp_path: Path) -> None:
    """dist_checkpointing (torch_dist) save and load on CPU: SequentialMLP -> grouped, grouped ->
    SequentialMLP, grouped -> grouped; GLU and not; per-expert keys (singleton_local_shards) too.
    Loading replaces every weight (they differed before) and the layers then compute the same."""
    got = probe(patched, "checkpoint", str(tmp_path))
    assert len(got) == 12
    for name, case in got.items():
        assert case["before"] > 0.01 and case["after"] == 0.0 and case["output"] < FP32, (name, case)
    assert got["swiglu_grouped_to_sequential"]["types"] == ["TorchGroupedMLP", "SequentialMLP"]


def test_what_the_backend_cannot_do_is_refused_by_name_at_config_time(patched: Path) -> None:
    got = probe(patched, "refusals")
    prefix = "use_turbo_grouped_mlp on the torch backend cannot do: "
    assert got["bias"] == prefix + "add_bias_linear=True (expert biases). Change these options, set " \
                                   "use_turbo_grouped_mlp: false, or install TransformerEngine."
    assert got["expert_tp"].startswith(prefix + "expert_tensor_parallel_size=2 (expert tensor parallelism)")
    assert got["legacy"].startswith(prefix + "moe_use_legacy_grouped_gemm=True")
    assert got["moe_act_recompute"].startswith(prefix + "recompute_modules with 'moe_act'")
    assert got["geglu_fusion"].startswith(prefix + "bias_activation_fusion=True with an activation other than SwiGLU")
    for name in ("fp8", "fp4", "delay_wgrad", "te_activation"):
        assert len(got[name]) == 1 and got[f"{name}_on_te"] == [], name  # TEGroupedMLP checks its own options
    assert got["fp8"] == ["fp8 / fp4 (quantized grouped GEMM)"]
    assert got["offload"] == ["offload_modules with 'expert_fc1' / 'moe_act' (expert activation offloading)"]
    assert got["alias"] == [True, "TorchGroupedMLP"]  # use_turbo_grouped_gemm (Primus HEAD's name)
    assert got["without_enable"] == got["off"] == "SequentialMLP"  # inert without enable_primus_turbo


def test_cuda_grouped_mm_dispatch_selection_logic_only(patched: Path) -> None:
    """DISPATCH test (selection logic only; no CUDA device runs here): bf16 on compute capability
    8.0+ takes grouped_mm; float32/float16 on a GPU, older GPUs, odd widths and float64 take the loop."""
    assert probe(patched, "dispatch") == {
        "cuda_bf16_sm90": "grouped_mm", "cuda_bf16_sm80": "grouped_mm", "cuda_bf16_sm75": "loop",
        "cuda_fp32_sm90": "loop", "cuda_fp16_sm90": "loop", "cuda_bf16_sm90_odd_width": "loop",
        "cpu_fp32": "grouped_mm", "cpu_bf16": "grouped_mm", "cpu_fp64": "loop", "cpu_fp32_odd_width": "loop",
        "primus_turbo_cuda_bf16": "primus_turbo"}


@pytest.mark.gpu
def test_cuda_grouped_mm_matches_sequential_mlp_in_bf16(trees: dict[str, Path]) -> None:
    """GPU only (selected where CUDA is): torch's CUDA grouped_mm against SequentialMLP in bf16,
    with empty experts and no tokens at all; and the grouped forward and backward make no host sync
    under ``torch.cuda.set_sync_debug_mode("error")`` while SequentialMLP's (which reads the counts
    with ``tolist``) raises, so the check can fail."""
    got = probe(trees["patched"], "cuda", fresh=True)
    sync = got.pop("sync_debug")
    for name, case in got.items():
        assert case["types"] == ["SequentialMLP", "TorchGroupedMLP"], name
        assert case["kernel"] == ["grouped_mm", "grouped_mm"], name
        for what in ("output", "grad_hidden", "grad_probs", "grad_weights"):
            assert case[what] < BF16, (name, what, case)
    assert sync["grouped_mm"] is None, sync
    assert sync["sequential"] is not None and "synchroniz" in sync["sequential"], sync


def test_dispatch_picks_torch_and_refuses_a_forced_backend_that_is_absent(patched: Path) -> None:
    assert probe(patched, "backend")["class"] == "TorchGroupedMLP"
    forced = probe(patched, "backend", env={"PRIMUS_TURBO_BACKEND": "transformer_engine"})
    assert forced["error"] == "PRIMUS_TURBO_BACKEND=transformer_engine: transformer_engine.pytorch does not import " \
                              "on this host"


def test_dispatch_to_a_primus_turbo_standin(patched: Path, tmp_path: Path) -> None:
    """DISPATCH test: the stand-in records what Primus-Turbo's grouped_gemm would be given (device
    int64 counts, [experts, out, in] weights with trans_b) and computes with a torch loop."""
    got = probe(patched, "backend", extra_path=write_standin(tmp_path, STANDIN_OPS))
    assert got["backend"] == "primus_turbo 0.0-standin" and got["class"] == "PrimusTurboGroupedMLP"
    counts = [5, 0, 7, 3]
    assert got["calls"] == [
        {"a": [15, 32], "b": [4, 48, 32], "group_lens": counts, "group_lens_dtype": "torch.int64", "trans_b": True},
        {"a": [15, 24], "b": [4, 32, 24], "group_lens": counts, "group_lens_dtype": "torch.int64", "trans_b": True}]
    assert got["output"] < FP32 and got["grad_hidden"] < FP32
