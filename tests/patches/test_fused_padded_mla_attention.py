"""fused_padded_mla_attention: V padded to the Q/K head dim is exact, and lets an equal-dim kernel run.

Spec D6 (shared/reference/flags-spec.md): for multi-latent attention, build core attention with
``v_channels = q_head_dim``, zero-pad ``value`` to ``q_head_dim`` before it and slice every head of
its output back to ``v_head_dim``; packed sequences are refused; flag off is upstream.

torch's CPU flash-attention kernel plays the fused kernel here: like AMD's TransformerEngine when
Primus wrote this flag, it needs q, k and v to have one head dim ("Flash attention requires q,k,v
to have the same last dimension"), and torch falls back to its math kernel otherwise. So on CPU the
flag changes which SDPA kernel runs: with one kernel for both paths the results are bit-identical;
across kernels they differ by the kernels' rounding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.patches.conftest import json_arg, run_probe

pytestmark = pytest.mark.slow

FLAG = {"fused_padded_mla_attention": True}
SEQ, BATCH, HEADS, QK_DIM, V_DIM = 12, 3, 4, 24, 16  # the deepseek test model: 16 + 8 rope, v 16


# ---------------------------------------------------------------------------------------------
# the helpers (megatron/core/_primus/mla_padding.py of the patched tree) around torch SDPA
# ---------------------------------------------------------------------------------------------

def _padding_module(tree: Path):
    path = tree / "megatron/core/_primus/mla_padding.py"
    spec = importlib.util.spec_from_file_location("mla_padding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def padding(trees: dict[str, Path]):
    return _padding_module(trees["patched"])


class RecordingKernel:
    """Core attention as megatron calls it: [s, b, n, d] in, [s, b, n * dv] out, via torch SDPA."""

    def __init__(self) -> None:
        self.head_dims: list[tuple[int, int, int]] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.head_dims.append((q.size(-1), k.size(-1), v.size(-1)))
        out = F.scaled_dot_product_attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)), is_causal=True,
                                             scale=QK_DIM ** -0.5)
        return out.permute(2, 0, 1, 3).reshape(q.size(0), q.size(1), -1)


def _inputs(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(SEQ, BATCH, HEADS, QK_DIM, generator=gen)
    k = torch.randn(SEQ, BATCH, HEADS, QK_DIM, generator=gen)
    v = torch.randn(SEQ, BATCH, HEADS, V_DIM, generator=gen)
    weight = torch.randn(SEQ, BATCH, HEADS * V_DIM, generator=gen)  # a loss that weighs every output
    return tuple(t.to(dtype) for t in (q, k, v, weight))


def _attend(padding, inputs: tuple[torch.Tensor, ...], padded: bool, kernel: RecordingKernel):
    """Output and q/k/v gradients, through the padded path (as the patched MLA) or directly."""
    q, k, v, weight = (t.clone().requires_grad_(i < 3) for i, t in enumerate(inputs))
    if padded:
        out = padding.unpad_output(kernel(q, k, padding.pad_value(v, QK_DIM)), QK_DIM, V_DIM)
    else:
        out = kernel(q, k, v)
    (out * weight).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_padded_path_equals_unpadded_with_the_same_kernel(padding, seed: int, dtype: torch.dtype) -> None:
    """One kernel (SDPA math) for both paths: output and q, k, v gradients are bit-identical
    (the spec asks max |diff| <= 1e-6 in fp32); the padded channels are exactly zero."""
    inputs = _inputs(seed, dtype)
    with sdpa_kernel(SDPBackend.MATH):
        ref = _attend(padding, inputs, padded=False, kernel=RecordingKernel())
        kernel = RecordingKernel()
        got = _attend(padding, inputs, padded=True, kernel=kernel)
        q, k, v, _ = inputs
        raw = kernel(q, k, padding.pad_value(v, QK_DIM)).view(SEQ, BATCH, HEADS, QK_DIM)
    assert kernel.head_dims[0] == (QK_DIM, QK_DIM, QK_DIM)
    assert got[0].shape == ref[0].shape == (SEQ, BATCH, HEADS * V_DIM) and got[0].is_contiguous()
    for name, a, b in zip(("output", "dq", "dk", "dv"), ref, got):
        assert torch.equal(a, b), (name, (a - b).abs().max())
    assert got[3].shape == (SEQ, BATCH, HEADS, V_DIM)
    assert torch.count_nonzero(raw[..., V_DIM:]) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_kernel_needing_equal_head_dims_runs_only_on_the_padded_path(padding, seed: int) -> None:
    """SDPA restricted to the flash kernel: unpadded MLA shapes are refused, padded ones run, every
    call gets equal q/k/v head dims, and the result is the math reference up to the two kernels'
    rounding (up to ~2e-6 seen on gradients of N(0, 1) inputs; the padding itself adds none, above)."""
    inputs = _inputs(seed)
    with sdpa_kernel(SDPBackend.MATH):
        ref = _attend(padding, inputs, padded=False, kernel=RecordingKernel())
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        with pytest.raises(RuntimeError, match="No available kernel"):
            _attend(padding, inputs, padded=False, kernel=RecordingKernel())
        kernel = RecordingKernel()
        got = _attend(padding, inputs, padded=True, kernel=kernel)
    assert set(kernel.head_dims) == {(QK_DIM, QK_DIM, QK_DIM)}
    for name, a, b in zip(("output", "dq", "dk", "dv"), ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)


def test_helper_edge_cases(padding) -> None:
    v = torch.randn(2, 1, 3, V_DIM)
    assert padding.pad_value(v, V_DIM) is v
    assert torch.equal(padding.pad_value(v, QK_DIM)[..., :V_DIM], v)
    with pytest.raises(ValueError, match="cannot pad value heads of dim 16 down to 8"):
        padding.pad_value(v, 8)
    out = torch.randn(2, 1, 3 * V_DIM)
    assert padding.unpad_output(out, V_DIM, V_DIM) is out
    with pytest.raises(ValueError, match="last dim 60 is not a whole number of heads of dim 24"):
        padding.unpad_output(torch.randn(2, 1, 60), QK_DIM, V_DIM)


# ---------------------------------------------------------------------------------------------
# the patched MultiLatentAttention itself (mla_probe.py; cpu-test trees: MLA's RoPE wants CUDA)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def attention(cpu_trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """``attention(tree, **options)``: what mla_probe.py saved (cached per module)."""
    workdir, cache = tmp_path_factory.mktemp("mla-probe"), {}

    def run(tree: str, **opts: object) -> dict:
        key = json_arg([tree, opts])
        if key not in cache:
            out = workdir / f"{len(cache)}.pt"
            run_probe(cpu_trees[tree], "mla_probe.py", str(out), json_arg(opts))
            cache[key] = torch.load(out)
        return cache[key]

    return run


def _tensors(result: dict) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in result.items() if torch.is_tensor(v)}
    assert "output" in tensors and len(tensors) >= 6, result.get("error")  # output, d(hidden), 4 weights
    return tensors


def test_flag_off_is_upstream_bit_for_bit(attention) -> None:
    """Default flags: core attention built with v_channels = v_head_dim and called with value heads
    of v_head_dim; output and every gradient equal upstream's exactly."""
    up, off = attention("upstream"), attention("patched")
    assert up["core_attention"] == off["core_attention"] == {"type": "RecordingSDPA", "k_channels": 24, "v_channels": 16}
    assert up["calls"] == off["calls"] == [[24, 24, 16]]
    for key, value in _tensors(up).items():
        assert torch.equal(value, off[key]), key


def test_flag_on_builds_core_attention_for_q_head_dim_values(attention) -> None:
    """Under the flag the core attention module kept by MLA is built with v_channels == q_head_dim
    and receives q, k and v with that one head dim."""
    on = attention("patched", config=FLAG)
    assert on["q_head_dim"] == 24
    assert on["core_attention"] == {"type": "RecordingSDPA", "k_channels": 24, "v_channels": on["q_head_dim"]}
    assert on["calls"] == [[24, 24, 24]]


def test_flag_on_is_upstream_bit_for_bit_with_the_same_kernel(attention) -> None:
    """SDPA math kernel for both: MLA's output, the input gradient and every weight gradient of the
    padded path equal upstream's unpadded ones exactly."""
    up, on = attention("upstream", backend="math"), attention("patched", backend="math", config=FLAG)
    assert on["calls"] == [[24, 24, 24]]
    for key, value in _tensors(up).items():
        assert torch.equal(value, on[key]), key


def test_flag_on_lets_the_equal_head_dim_kernel_run(attention) -> None:
    """SDPA flash kernel only: upstream's MLA (v 16, q/k 24) finds no kernel; with the flag it runs,
    and matches upstream's math-kernel result up to kernel rounding. torch's own choice under the
    flag is this kernel."""
    assert "No available kernel" in attention("upstream", backend="flash")["error"]
    flash = attention("patched", backend="flash", config=FLAG)
    reference = _tensors(attention("upstream", backend="math"))
    for key, value in _tensors(flash).items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-6, msg=key)
    default = attention("patched", config=FLAG)
    for key, value in _tensors(flash).items():
        assert torch.equal(value, default[key]), key


def test_packed_sequences_are_refused(attention) -> None:
    """THD-packed input with the flag on: a clear assertion before core attention runs."""
    got = attention("patched", packed=True, config=FLAG)
    assert got["error"].startswith("AssertionError: fused_padded_mla_attention does not support packed sequences")
    assert got["calls"] == []
