"""GPU benchmark of ``python -m primus_runtime convert`` on a Llama 3.2 1B-shaped model.

    python benchmarks/bench_trainer.py stage           # here: default-flavor trees into .devicework/
    python benchmarks/bench_convert.py run OUT_DIR     # on a GPU machine (needs transformers, safetensors)

``run`` makes a random-init Hugging Face ``LlamaForCausalLM`` with the config the converter derives
from configs/examples/llama3.2_1B-bench.yaml (bf16, sharded safetensors; nothing is downloaded),
then times, each as its own process: ``convert hf-to-mcore``; the trainer loading the result with
``finetune`` and evaluating it (1 step, 8 evaluation batches); ``convert mcore-to-hf`` back; and
checks that every tensor came back bit for bit. Times and peak resident memory of each
conversion go to OUT_DIR/results.json and the console.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_trainer import compile_helpers

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / ".devicework" / "patched"
EXP = REPO / "configs" / "examples" / "llama3.2_1B-bench.yaml"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TREE), str(REPO), os.environ.get("PYTHONPATH", "")])}


def timed(label: str, argv: list[str], results: dict) -> None:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(), check=True)
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    results[label] = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_gib_so_far": round(peak_gib, 2)}
    print(f"{label}: {results[label]}", flush=True)


def make_hf(folder: Path) -> None:
    import torch
    import transformers

    from primus_runtime.config.loader import load_experiment
    from primus_runtime.convert import families

    params = load_experiment(EXP).params
    config = families.build_hf_config(params, families.family_of(params), "bfloat16")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder), max_shard_size="1GB")


def same_tensors(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    def load(folder: Path) -> dict:
        found: dict = {}
        for file in sorted(folder.glob("*.safetensors")):
            found.update(load_file(file))
        return found

    left, right = load(a), load(b)
    return sorted(left) == sorted(right) and all(torch.equal(left[k], right[k]) for k in left)


def run(out: Path) -> None:
    sys.path.insert(0, str(REPO))
    out.mkdir(parents=True, exist_ok=True)
    compile_helpers(TREE)  # the evaluation's mock data needs megatron's dataset helper
    results: dict = {}
    start = time.perf_counter()
    make_hf(out / "hf")
    results["make random HF model"] = {"seconds": round(time.perf_counter() - start, 2)}
    timed("hf-to-mcore", ["-m", "primus_runtime", "convert", "hf-to-mcore", "--hf", str(out / "hf"), "--exp",
                          str(EXP), "--out", str(out / "ckpt"), "--quiet"], results)
    timed("load (finetune) and evaluate", ["-m", "torch.distributed.run", "--nproc-per-node", "1", "-m",
                                           "primus_runtime", "train", "--exp", str(EXP), "--load", str(out / "ckpt"),
                                           "--finetune", "--train_iters", "1", "--lr_warmup_iters", "0",
                                           "--eval_interval", "1", "--eval_iters", "8", "--workspace",
                                           str(out / "run")], results)
    timed("mcore-to-hf", ["-m", "primus_runtime", "convert", "mcore-to-hf", "--ckpt", str(out / "ckpt"), "--exp",
                          str(EXP), "--out", str(out / "back"), "--quiet"], results)
    results["round trip bit-identical"] = same_tensors(out / "hf", out / "back")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] != ["run"] or len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/bench_convert.py run OUT_DIR")
    run(Path(sys.argv[2]))
