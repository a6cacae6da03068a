"""GPU benchmark of the Turbo attention and the trainer's fast paths: Llama 3.2 1B (and a ~3B Llama
at sequence 4096) on the patched wheel's source against unpatched upstream megatron-core 0.16.1,
in one session, on one GPU, without TransformerEngine.

    python benchmarks/bench_turbo.py stage                       # here: default-flavor trees into .devicework/
    python benchmarks/bench_turbo.py run OUT_DIR [LABEL ...]     # on the GPU machine (device tool)

``run`` first measures the machine's bf16 GEMM rate (8192^3, random data, median of 20), then
trains each configuration of :data:`RUNS` (all, or those whose label starts with one of the
LABELs) with ``python -m primus_runtime train`` on mock data and prints per-GPU tokens/s,
TFLOP/s (Megatron's causal FLOPs formula), MFU against the dense bf16 peak (989 TFLOP/s) and
against the measured GEMM rate, peak allocated memory, each run's ratio to the upstream run, and
the largest loss difference from the run it is compared with. Runs whose label ends in
``[profile]`` also record two iterations with the torch profiler and print the GPU time per kernel
family. Results go to OUT_DIR/results.json, the logs to OUT_DIR/runN.log.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_trainer  # noqa: E402
from bench_trainer import WORK, compile_helpers, stage  # noqa: E402

SMALL = REPO / "configs" / "examples" / "llama3.2_1B-bench.yaml"
LARGE = REPO / "configs" / "examples" / "llama3.2_3B-bench.yaml"
PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, the figure MFU is quoted against
SKIP = 3  # iterations left out of the medians (allocator and kernel warm-up)
TURBO = ["--enable_primus_turbo", "true", "--use_turbo_attention", "true"]

CE = ["--cross_entropy_loss_fusion", "true"]

#: (label, experiment, tree, overrides, compare losses with): each row adds one change to the one above
RUNS: list[tuple[str, Path, str, list[str], str | None]] = [
    ("1B upstream, local spec", SMALL, "upstream", [], None),
    ("1B patched, flags at defaults", SMALL, "patched", [], "1B upstream, local spec"),
    ("1B + Turbo attention (torch SDPA, fused RoPE)", SMALL, "patched", TURBO, "1B upstream, local spec"),
    ("1B + fused cross-entropy", SMALL, "patched", [*TURBO, *CE], "1B upstream, local spec"),
    ("1B + micro batch 8 [profile]", SMALL, "patched", [*TURBO, *CE, "--micro_batch_size", "8"],
     "1B upstream, local spec"),
    ("3B upstream, local spec, micro batch 1", LARGE, "upstream", ["--micro_batch_size", "1"], None),
    ("3B Turbo attention, micro batch 1", LARGE, "patched", [*TURBO, "--micro_batch_size", "1"],
     "3B upstream, local spec, micro batch 1"),
    ("3B upstream, local spec", LARGE, "upstream", [], None),
    ("3B Turbo attention + fused cross-entropy", LARGE, "patched", [*TURBO, *CE], "3B upstream, local spec"),
    ("3B + micro batch 4", LARGE, "patched", [*TURBO, *CE, "--micro_batch_size", "4"], "3B upstream, local spec"),
]


def gemm_tflops() -> float:
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def kernel_families(trace_dir: Path) -> list[tuple[str, float]]:
    """GPU milliseconds per kernel family over the profiled iterations (largest first)."""
    traces = sorted(trace_dir.rglob("*.pt.trace.json*"))
    if not traces:
        return []
    opener = gzip.open if traces[-1].suffix == ".gz" else open
    with opener(traces[-1], "rt") as f:
        events = json.load(f)["traceEvents"]
    total: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "kernel":
            total[_family(e["name"])] += e["dur"] / 1e3
    return total.most_common(25)


def _family(name: str) -> str:
    lowered = name.lower()
    for key, family in (("flash", "attention (flash)"), ("fmha", "attention (fused)"), ("cudnn", "cudnn"),
                        ("gemm", "GEMM"), ("nvjet", "GEMM"), ("cutlass", "GEMM"), ("sm90_xmma", "GEMM"),
                        ("softmax", "softmax"), ("multi_tensor", "optimizer (multi-tensor)"),
                        ("nccl", "NCCL"), ("triton", "triton")):
        if key in lowered:
            return family
    return name[:90]


def train(label: str, exp: Path, tree: str, overrides: list[str], out: Path, index: int) -> dict[str, Any]:
    """One run on GPU 0 (bench_trainer's), plus the log lines naming the paths in use and, for a
    ``[profile]`` run, the GPU time per kernel family."""
    profile = label.endswith("[profile]")
    if profile:
        overrides = [*overrides, "--profile", "true", "--use_pytorch_profiler", "true", "--profile_step_start", "8",
                     "--profile_step_end", "10", "--disable_profiler_activity_cpu", "true",
                     "--torch_profiler_with_stack", "false", "--torch_profiler_record_shapes", "false",
                     "--disable_tensorboard", "false"]
    result = bench_trainer.train(label, tree, 1, overrides, out, index, exp=exp)
    if result.get("failed"):
        return result
    log = (out / f"run{index}.log").read_text()
    result["log_lines"] = [line for line in log.splitlines()
                           if "Turbo" in line or "model:" in line or "fused" in line or "portable" in line][:12]
    if profile:
        result["kernels"] = kernel_families(out / f"run{index}")
    return result


def run(out: Path, labels: list[str]) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    gemm = gemm_tflops()
    for tree in ("upstream", "patched"):
        compile_helpers(WORK / tree)
    chosen = [r for r in RUNS if not labels or any(r[0].startswith(x) for x in labels)]
    results: list[dict[str, Any]] = []
    for i, (label, exp, tree, overrides, _) in enumerate(chosen):
        results.append(train(label, exp, tree, overrides, out, i))
        # written after every run, so that a run cut short by the device's time limit keeps what finished
        (out / "results.json").write_text(json.dumps({"gpu": gpu, "gemm_tflops": gemm, "results": results}, indent=1))
        print(f"done {label}: {results[-1].get('tokens_per_gpu', 'failed')} tokens/s", flush=True)
    print(f"GPU: {gpu}; torch {torch.__version__}; bf16 GEMM 8192^3: {gemm:.0f} TFLOP/s")
    by = {r["label"]: r for r in results if not r.get("failed")}
    print("| run | tokens/s per GPU | TFLOP/s per GPU | MFU (989) | MFU (GEMM) | step (ms) | peak GiB | x upstream | "
          "max loss diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (label, _, _, _, against), r in zip(chosen, results):
        if r.get("failed"):
            print(f"| {label} | failed | | | | | | | |")
            continue
        base = by.get(f"{label[:2]} upstream, local spec")
        ratio = f"x{r['tokens_per_gpu'] / base['tokens_per_gpu']:.2f}" if base else ""
        diff = ""
        if against in by:
            pairs = list(zip(r["losses"], by[against]["losses"]))
            diff = "bit-identical" if all(a == b for a, b in pairs) else f"{max(abs(a - b) for a, b in pairs):.2e}"
        print(f"| {label} | {r['tokens_per_gpu']:,.0f} | {r['tflops']:.1f} | {100 * r['tflops'] / PEAK_BF16_TFLOPS:.1f}% "
              f"| {100 * r['tflops'] / gemm:.1f}% | {r['step_ms']:.1f} | {r['peak_gib']:.2f} | {ratio} | {diff} |")
    for r in results:
        for line in r.get("log_lines", []):
            print(f"  [{r['label']}] {line[-200:]}")
        if r.get("kernels"):
            print(f"GPU time per kernel family, 2 iterations of {r['label']}:")
            for name, ms in r["kernels"]:
                print(f"  {ms:9.1f} ms  {name}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["stage"]:
        stage()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) >= 3:
        run(Path(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)
