"""GPU benchmark of the MoE flags: step time, tokens/s and peak memory, flag on vs off, and the
patched build against upstream in the same run.

Two steps, because the GPU machine has no network and no megatron-core:

    python benchmarks/bench_moe_flags.py stage          # here: source trees into .devicework/
    python benchmarks/bench_moe_flags.py run OUT_DIR    # on the GPU machine (device tool)

``stage`` writes two cpu-test-flavor trees of the pinned upstream, one without patches and one
with the newest patchset. On a CUDA host the flavor's device module is ``torch.cuda`` itself;
it is used because upstream 0.16.1's MoE router cannot run without TransformerEngine (a
``NameError`` on ``te_general_gemm``, see docs/cpu-testing.md) and TE is not on that machine.
Both trees get the same treatment, so the comparison is fair. ``run`` trains each configuration
with ``tests/cpu/train_tiny.py`` (megatron.core's GPTModel, DDP, optimizer and schedule) in bf16
and prints a table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".devicework"
SCRIPT = REPO / "tests" / "cpu" / "train_tiny.py"

SHAPE = {"vocab": 32000, "seq": 2048, "global_batch": 8, "micro_batch": 2}
# Mixtral-style and DeepSeek-V2-Lite-style, at a size one GPU trains in seconds per step
MIXTRAL = {"num_layers": 4, "hidden_size": 2048, "num_attention_heads": 16, "num_query_groups": 4,
           "ffn_hidden_size": 5632, "num_moe_experts": 8, "moe_router_topk": 2, "moe_ffn_hidden_size": 5632}
DEEPSEEK = {"num_layers": 4, "hidden_size": 2048, "num_attention_heads": 16, "ffn_hidden_size": 5632,
            "kv_lora_rank": 512, "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128,
            "num_moe_experts": 8, "moe_router_topk": 2, "moe_ffn_hidden_size": 1408,
            "moe_shared_expert_intermediate_size": 2816}
EVEN = {"moe_router_force_load_balancing": True, "moe_router_force_load_balancing_type": "even"}

CONFIGS = [
    # (name, tree, model, arch, flags)
    ("mixtral upstream", "upstream", "moe", MIXTRAL, {}),
    ("mixtral upstream, again (noise)", "upstream", "moe", MIXTRAL, {}),
    ("mixtral patched, flags off", "patched", "moe", MIXTRAL, {}),
    ("mixtral force balancing uniform (upstream mode)", "patched", "moe", MIXTRAL,
     {"moe_router_force_load_balancing": True}),
    ("mixtral force balancing even", "patched", "moe", MIXTRAL, EVEN),
    ("mixtral fused router with aux score", "patched", "moe", MIXTRAL, {"moe_use_fused_router_with_aux_score": True}),
    ("mixtral moe_permute_fusion (no TE: torch path)", "patched", "moe", MIXTRAL, {"moe_permute_fusion": True}),
    ("deepseek upstream", "upstream", "deepseek", DEEPSEEK, {}),
    ("deepseek upstream, again (noise)", "upstream", "deepseek", DEEPSEEK, {}),
    ("deepseek patched, flags off", "patched", "deepseek", DEEPSEEK, {}),
    ("deepseek fused_padded_mla_attention", "patched", "deepseek", DEEPSEEK, {"fused_padded_mla_attention": True}),
]


def stage() -> None:
    sys.path.insert(0, str(REPO))
    from rewriter.build import Paths, Upstream, apply_patchsets, stage_version
    from rewriter.ui import UI
    from rewriter.upstream import default_cache_dir, load_pin

    paths = Paths(REPO / "patchsets", REPO / "vendor" / "upstream.yaml", default_cache_dir(REPO), REPO / "build" / "cache")
    applied = apply_patchsets(paths, Upstream(load_pin(paths.pin).pinned.commit), UI())
    shutil.rmtree(WORK, ignore_errors=True)
    for name, version in (("upstream", None), ("patched", applied.patchsets.newest())):
        stage_version(applied, version, WORK / name, "cpu-test", paths.build_cache)
        shutil.rmtree(WORK / name / "build", ignore_errors=True)
    print(f"staged {WORK}; carry it with the device tool (carry: ['.devicework'])")


def run(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, tree, model, arch, flags) in enumerate(CONFIGS):
        out = out_dir / f"run{i}.json"
        opts = {"model": model, "arch": arch, "config": flags, "shape": SHAPE, "bf16": True, "lr": 3e-4,
                "steps": 20, "timing_warmup": 5}
        env = {**os.environ, "PYTHONPATH": str(WORK / tree), "PYTHONWARNINGS": "ignore",
               "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", str(SCRIPT), str(out), json.dumps(opts)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("[rank0]:") and "Error" in ln]
            print(f"{name}: FAILED: {' | '.join(errors[-3:]) or proc.stderr[-1500:]}", flush=True)
            continue
        result = json.loads(out.read_text())
        rows.append((name, result))
        print(f"{name:52s} {result['step_ms']:9.1f} ms {result['tokens_per_s']:11.0f} tok/s "
              f"{result['peak_gib']:6.2f} GiB  loss {result['losses'][-1]:.4f}", flush=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    by_name = dict(rows)
    for model in ("mixtral", "deepseek"):
        base = by_name.get(f"{model} upstream")
        for other in (f"{model} upstream, again (noise)", f"{model} patched, flags off"):
            run_ = by_name.get(other)
            if base and run_:
                worst = max(abs(a - b) / abs(b) for a, b in zip(run_["losses"], base["losses"]))
                print(f"{other} vs {model} upstream: step time {run_['step_ms'] / base['step_ms']:.3f}, "
                      f"tokens/s {run_['tokens_per_s'] / base['tokens_per_s']:.3f}; losses bit-identical: "
                      f"{run_['losses'] == base['losses']}, largest relative difference {worst:.2e}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["stage"]:
        stage()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        run(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
