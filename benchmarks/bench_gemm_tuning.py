"""GPU benchmark of PRIMUS_HIPBLASLT_TUNING_STAGE (TunableOp): does tuning the GEMMs speed up training?

    python benchmarks/bench_turbo.py stage                 # here: default-flavor trees into .devicework/
    python benchmarks/bench_gemm_tuning.py run OUT_DIR     # on the GPU machine (device tool)

Llama 3.2 1B bench config with the Turbo attention and fused cross-entropy, micro batch 8, on the
patched tree: stage 0 (torch's default GEMM choice), stage 1 (record shapes, 5 iterations: the bench drops the first 3 from its medians),
stage 2 (tune; ``PYTORCH_TUNABLEOP_MAX_TUNING_DURATION_MS`` caps each shape), stage 3 (train with
the tuned choices). Prints tokens/s of stages 0 and 3, their ratio, the number of tuned shapes
and the tuning time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_trainer import WORK, compile_helpers, free_port  # noqa: E402
from bench_turbo import CE, SMALL, TURBO, train  # noqa: E402

OPTIONS = [*TURBO, *CE, "--micro_batch_size", "8"]
STAGE = "PRIMUS_HIPBLASLT_TUNING_STAGE"


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    compile_helpers(WORK / "patched")
    os.environ["PYTORCH_TUNABLEOP_MAX_TUNING_DURATION_MS"] = os.environ.get("PYTORCH_TUNABLEOP_MAX_TUNING_DURATION_MS",
                                                                            "20")
    os.environ[STAGE] = "0"
    base = train("stage 0: default GEMMs", SMALL, "patched", [*OPTIONS, "--train_iters", "12"], out, 0)
    print(f"stage 0: {base.get('tokens_per_gpu', 0):,.0f} tokens/s", flush=True)
    os.environ[STAGE] = "1"
    train("stage 1: record shapes", SMALL, "patched", [*OPTIONS, "--train_iters", "5"], out, 1)
    recorded = sorted(out.rglob("untuned*.csv"))
    shapes = sum(1 for line in recorded[0].read_text().splitlines() if line.startswith("Gemm")) if recorded else 0
    print(f"stage 1: {shapes} GEMM shapes recorded in {recorded}", flush=True)
    os.environ[STAGE] = "2"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORK / "patched"), str(Path.cwd())]),
           "PRIMUS_EXP_NAME": "run2", "PRIMUS_WORKSPACE": str(out), "CUDA_VISIBLE_DEVICES": "0"}
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                           str(free_port()), "-m", "primus_runtime", "train", "--exp", str(SMALL), *OPTIONS],
                          env=env, capture_output=True, text=True)
    print(f"stage 2: exit {proc.returncode} after {time.perf_counter() - began:.0f} s; "
          f"{[line for line in proc.stderr.splitlines() if 'tune GEMM' in line][-1:]}", flush=True)
    (out / "run2.log").write_text(proc.stdout + proc.stderr)
    os.environ[STAGE] = "3"
    tuned = train("stage 3: tuned GEMMs", SMALL, "patched", [*OPTIONS, "--train_iters", "12"], out, 3)
    if base.get("tokens_per_gpu") and tuned.get("tokens_per_gpu"):
        print(f"stage 3: {tuned['tokens_per_gpu']:,.0f} tokens/s; tuned / default x"
              f"{tuned['tokens_per_gpu'] / base['tokens_per_gpu']:.3f}; max loss diff "
              f"{max(abs(a - b) for a, b in zip(tuned['losses'], base['losses'])):.2e}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        run(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
