"""GPU micro-benchmark of the pieces the Turbo/fast paths choose between, at the bench models' shapes.

    python benchmarks/bench_kernels.py          # on the GPU machine (device tool)

Forward + backward, bf16, median of CUDA-event timings after warm-up, fresh random inputs:
torch SDPA per kernel (flash, cuDNN, memory-efficient; GQA by ``enable_gqa`` or by expanded
key/value heads) for Llama 3.2 1B (32 heads, 8 groups, dim 64, sequence 2048, batch 4) and 3B
(24 heads, 8 groups, dim 128, sequence 4096, batch 2); RMSNorm as megatron's local spec builds it
(``torch.nn.RMSNorm``) against ``torch.compile`` of it; SwiGLU as megatron's fused ``bias_swiglu``
against ``torch.compile``. The trainer's defaults are chosen from these numbers (docs/benchmarks.md).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn: Callable[[], object], reps: int = 30) -> float:
    """Median milliseconds of ``fn`` (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def attention(batch: int, heads: int, groups: int, dim: int, seq: int) -> None:
    q = torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(batch, groups, seq, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    grad = torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16)
    flops = 4 * batch * heads * seq * seq * dim / 2 * 3.5  # causal fwd (2 GEMMs) + bwd (2.5x fwd)

    def step(gqa: bool) -> None:
        kk, vv = (k, v) if gqa else (t.repeat_interleave(heads // groups, dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
        out.backward(grad)

    print(f"SDPA fwd+bwd, b={batch} h={heads} g={groups} d={dim} s={seq}:")
    for name, backend in (("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        for gqa in (True, False):
            try:
                ctx = sdpa_kernel(backend) if backend is not None else torch.enable_grad()
                with ctx:
                    ms = timed(lambda g=gqa: step(g))
                print(f"  {name:9s} {'enable_gqa' if gqa else 'expanded kv'}: {ms:7.3f} ms  "
                      f"{flops / ms / 1e9:6.0f} TFLOP/s")
            except RuntimeError as exc:
                print(f"  {name:9s} {'enable_gqa' if gqa else 'expanded kv'}: unavailable ({str(exc)[:80]})")


def norms_and_activations(tokens: int, hidden: int, ffn: int) -> None:
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(x)
    norm = torch.nn.RMSNorm(hidden, eps=1e-5, device="cuda", dtype=torch.bfloat16)
    compiled_norm = torch.compile(norm)
    print(f"RMSNorm fwd+bwd [{tokens}, {hidden}]: torch.nn.RMSNorm {timed(lambda: norm(x).backward(g)):.3f} ms, "
          f"compiled {timed(lambda: compiled_norm(x).backward(g)):.3f} ms")
    y = torch.randn(tokens, 2 * ffn, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(tokens, ffn, device="cuda", dtype=torch.bfloat16)

    def swiglu(t: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(t, 2, dim=-1)
        return F.silu(a) * b

    compiled = torch.compile(swiglu)
    print(f"SwiGLU fwd+bwd [{tokens}, {2 * ffn}]: eager {timed(lambda: swiglu(y).backward(gy)):.3f} ms, "
          f"compiled {timed(lambda: compiled(y).backward(gy)):.3f} ms")


if __name__ == "__main__":
    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}")
    attention(4, 32, 8, 64, 2048)
    attention(2, 24, 8, 128, 4096)
    norms_and_activations(8192, 2048, 8192)
