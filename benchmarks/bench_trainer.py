"""GPU benchmark of ``python -m primus_runtime train``: a ~1B Llama on the patched wheel's source
against unpatched upstream megatron-core 0.16.1, in the same session.

Two steps, because the GPU machine has no network and no megatron-core:

    python benchmarks/bench_trainer.py stage          # here: default-flavor trees into .devicework/
    python benchmarks/bench_trainer.py run OUT_DIR    # on a 2-GPU machine (device tool)

``stage`` writes the pinned upstream without patches and with the newest patchset (the same
sources as the wheels; the GPU machine builds megatron's C++ dataset helper itself). ``run``
trains Llama 3.2 1B (configs/models/megatron/llama3.2_1B.yaml) on mock data in bf16 with every
flag at its default: on one GPU with each tree, then with PP=2 on two GPUs with each tree and
with ``pp_warmup``. It prints per-GPU tokens/s and TFLOP/s (Megatron's FLOPs formula), MFU
against the GPU's dense bf16 peak, peak allocated memory of the last rank, and the first
iteration's time (what pp_warmup is for), as medians over the iterations after the warm-up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".devicework"
EXP = REPO / "configs" / "examples" / "llama3.2_1B-bench.yaml"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM
SKIP = 3  # iterations left out of the medians (allocator and kernel warm-up)

RUNS = [
    # (label, tree, GPUs, overrides)
    ("1 GPU, upstream 0.16.1", "upstream", 1, []),
    ("1 GPU, patched, flags at defaults", "patched", 1, []),
    ("1 GPU, upstream 0.16.1, again (noise)", "upstream", 1, []),
    ("2 GPUs PP=2, upstream 0.16.1", "upstream", 2, ["--pipeline_model_parallel_size", "2"]),
    ("2 GPUs PP=2, patched, flags at defaults", "patched", 2, ["--pipeline_model_parallel_size", "2"]),
    ("2 GPUs PP=2, patched, pp_warmup", "patched", 2, ["--pipeline_model_parallel_size", "2", "--pp_warmup", "true"]),
]


def stage() -> None:
    sys.path.insert(0, str(REPO))
    from rewriter.build import Paths, Upstream, apply_patchsets, stage_version
    from rewriter.ui import UI
    from rewriter.upstream import default_cache_dir, load_pin

    paths = Paths(REPO / "patchsets", REPO / "vendor" / "upstream.yaml", default_cache_dir(REPO), REPO / "build" / "cache")
    applied = apply_patchsets(paths, Upstream(load_pin(paths.pin).pinned.commit), UI(quiet=True))
    shutil.rmtree(WORK, ignore_errors=True)
    stage_version(applied, None, WORK / "upstream", "default", paths.build_cache)
    stage_version(applied, applied.patchsets.newest(), WORK / "patched", "default", paths.build_cache)
    print(f"staged {WORK}/upstream and {WORK}/patched")


def compile_helpers(tree: Path) -> None:
    """megatron's dataset index helper, as the wheel ships it (mock data needs it too)."""
    datasets = tree / "megatron" / "core" / "datasets"
    target = datasets / f"helpers_cpp{sysconfig.get_config_var('EXT_SUFFIX')}"
    if target.exists():
        return
    includes = subprocess.run([sys.executable, "-m", "pybind11", "--includes"], check=True, capture_output=True,
                              text=True).stdout.split()
    subprocess.run(["g++", "-O3", "-shared", "-std=c++17", "-fPIC", *includes, str(datasets / "helpers.cpp"),
                    "-o", str(target)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(label: str, tree: str, gpus: int, overrides: list[str], out: Path, index: int, exp: Path = EXP) -> dict:
    name = f"run{index}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORK / tree), str(REPO)]), "PYTHONUNBUFFERED": "1",
           "PRIMUS_EXP_NAME": name, "PRIMUS_WORKSPACE": str(out), "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus), "--master_port",
               str(free_port()), "-m", "primus_runtime", "train", "--exp", str(exp), *overrides]
    began = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(f"{label}: failed ({proc.returncode}); see {name}.log\n{proc.stderr[-3000:]}")
        return {"label": label, "failed": True}
    records = [json.loads(line) for line in (out / name / "logs" / "metrics.jsonl").read_text().splitlines()]
    steady = records[SKIP:]
    return {
        "label": label, "command": " ".join(["PYTHONPATH=<tree>:.", *command[1:]]), "wall_s": wall,
        "first_ms": records[0]["elapsed_ms"], "step_ms": statistics.median(r["elapsed_ms"] for r in steady),
        "tokens_per_gpu": statistics.median(r["tokens_per_gpu"] for r in steady),
        "tflops": statistics.median(r["tflops"] for r in steady),
        "peak_gib": max(r.get("max_allocated_gib") or 0.0 for r in records),
        "losses": [r["loss"] for r in records],
    }


def run(out: Path) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    for tree in ("upstream", "patched"):
        compile_helpers(WORK / tree)
    results = [train(label, tree, gpus, overrides, out, i) for i, (label, tree, gpus, overrides) in enumerate(RUNS)]
    (out / "results.json").write_text(json.dumps({"gpu": gpu, "results": results}, indent=1))
    print(f"GPU: {gpu}; {torch.cuda.device_count()} visible; torch {torch.__version__}")
    print("| run | tokens/s per GPU | TFLOP/s per GPU | MFU | step (ms) | first iteration (ms) | peak memory, last rank (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if r.get("failed"):
            print(f"| {r['label']} | failed | | | | | |")
            continue
        mfu = f"{100 * r['tflops'] / peak:.1f}%" if peak else "n/a"
        print(f"| {r['label']} | {r['tokens_per_gpu']:,.0f} | {r['tflops']:.1f} | {mfu} | {r['step_ms']:.1f} | "
              f"{r['first_ms']:.0f} | {r['peak_gib']:.2f} |")
    by = {r["label"]: r for r in results if not r.get("failed")}

    def ratio(a: str, b: str) -> None:
        if a in by and b in by:
            same = by[a]["losses"] == by[b]["losses"]
            print(f"{b} / {a}: tokens/s x{by[b]['tokens_per_gpu'] / by[a]['tokens_per_gpu']:.3f}; "
                  f"losses {'bit-identical' if same else 'differ'}")

    ratio(RUNS[0][0], RUNS[1][0])
    ratio(RUNS[0][0], RUNS[2][0])
    ratio(RUNS[3][0], RUNS[4][0])
    ratio(RUNS[4][0], RUNS[5][0])


if __name__ == "__main__":
    if sys.argv[1:2] == ["stage"]:
        stage()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        run(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
