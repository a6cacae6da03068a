"""GPU benchmark of the MoE flags: step time, tokens/s and peak memory, flag on vs off, and the
patched build against upstream in the same run.

Two steps, because the GPU machine has no network and no megatron-core:

    python benchmarks/bench_moe_flags.py stage                  # here: source trees into .devicework/moe/
    python benchmarks/bench_moe_flags.py run OUT_DIR [LABEL ...]  # on the GPU machine (device tool)

``stage`` writes two cpu-test-flavor trees of the pinned upstream, one without patches and one
with the newest patchset. On a CUDA host the flavor's device module is ``torch.cuda`` itself;
it is used because upstream 0.16.1's MoE router cannot run without TransformerEngine (a
``NameError`` on ``te_general_gemm``, see docs/cpu-testing.md) and TE is not on that machine.
Both trees get the same treatment, so the comparison is fair. ``run`` trains each configuration
with ``python -m primus_runtime train`` (megatron.core's GPTModel, DDP, optimizer and schedule;
mock data) in bf16 on one GPU and prints a table from each run's ``logs/metrics.jsonl``: all of
:data:`CONFIGS`, or those whose name starts with one of the LABELs. A configuration that needs a
package the machine lacks (upstream's legacy ``GroupedMLP`` needs ``grouped_gemm``) is reported as
not run, with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from bench_trainer import compile_helpers, free_port

REPO = Path(__file__).resolve().parents[1]
#: its own folder, so that the default-flavor trees of bench_trainer.py can travel beside it
WORK = REPO / ".devicework" / "moe"
TIMING_WARMUP = 5  # iterations left out of the means (allocator and kernel warm-up)

#: 20 steps of 8 sequences of 2048 tokens (2 per microbatch), bf16, Adam at 3e-4
TRAINING: dict[str, Any] = {"train_iters": 20, "seq_length": 2048, "max_position_embeddings": 2048, "global_batch_size": 8,
            "micro_batch_size": 2, "bf16": True, "lr": 3.0e-4, "lr_decay_style": "constant", "weight_decay": 0.0,
            "mock_data": True, "vocab_size": 32000, "eval_iters": 0, "num_workers": 0,
            "moe_grouped_gemm": False}
# Mixtral-style and DeepSeek-V2-Lite-style, at a size one GPU trains in well under a second per step
Model = tuple[str, dict[str, Any]]  # (zoo model file, architecture overrides)
MIXTRAL: Model = ("mixtral_base.yaml", {"num_layers": 4, "hidden_size": 2048, "num_attention_heads": 16,
                                 "num_query_groups": 4, "ffn_hidden_size": 5632, "num_experts": 8,
                                 "moe_router_topk": 2, "moe_ffn_hidden_size": 5632})
DEEPSEEK: Model = ("deepseek_v2_base.yaml", {"num_layers": 4, "hidden_size": 2048, "num_attention_heads": 16,
                                      "ffn_hidden_size": 5632, "q_lora_rank": None, "kv_lora_rank": 512,
                                      "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128,
                                      "num_experts": 8, "moe_router_topk": 2, "moe_ffn_hidden_size": 1408,
                                      "moe_shared_expert_intermediate_size": 2816, "moe_layer_freq": 1})
EVEN = {"moe_router_force_load_balancing": True, "moe_router_force_load_balancing_type": "even"}
TURBO_EXPERTS = {"enable_primus_turbo": True, "use_turbo_grouped_mlp": True}
#: upstream's legacy grouped path without TE: GroupedMLP over the grouped_gemm package
LEGACY_GROUPED = {"moe_grouped_gemm": True, "moe_use_legacy_grouped_gemm": True}


def sync_free(stage: int) -> dict[str, Any]:
    return {"enable_primus_turbo": True, "turbo_sync_free_moe_stage": stage}


#: configurations that need a package beyond torch: (name, module)
NEEDS = {"mixtral upstream legacy GroupedMLP (grouped_gemm)": "grouped_gemm"}

CONFIGS: list[tuple[str, str, Model, dict[str, Any]]] = [
    # (name, tree, (model file, architecture), flags)
    ("mixtral upstream", "upstream", MIXTRAL, {}),
    ("mixtral upstream, again (noise)", "upstream", MIXTRAL, {}),
    ("mixtral patched, flags off", "patched", MIXTRAL, {}),
    ("mixtral force balancing uniform (upstream mode)", "patched", MIXTRAL, {"moe_router_force_load_balancing": True}),
    ("mixtral force balancing even", "patched", MIXTRAL, EVEN),
    ("mixtral fused router with aux score", "patched", MIXTRAL, {"moe_use_fused_router_with_aux_score": True}),
    ("mixtral moe_permute_fusion (no TE: torch path)", "patched", MIXTRAL, {"moe_permute_fusion": True}),
    # never run yet: torch grouped_mm on CUDA (bf16) in place of upstream's SequentialMLP loop
    ("mixtral use_turbo_grouped_mlp (torch grouped_mm)", "patched", MIXTRAL, TURBO_EXPERTS),
    ("mixtral upstream legacy GroupedMLP (grouped_gemm)", "upstream", MIXTRAL, LEGACY_GROUPED),
    # the whole step with the MoE layers free of host syncs (stage 2: portable dispatcher with
    # device-sized buffers + grouped experts; stage 3: + fixed-size padded expert segments)
    ("mixtral turbo_sync_free_moe_stage 2", "patched", MIXTRAL, sync_free(2)),
    ("mixtral turbo_sync_free_moe_stage 3", "patched", MIXTRAL, sync_free(3)),
    ("deepseek upstream", "upstream", DEEPSEEK, {}),
    ("deepseek upstream, again (noise)", "upstream", DEEPSEEK, {}),
    ("deepseek patched, flags off", "patched", DEEPSEEK, {}),
    ("deepseek fused_padded_mla_attention", "patched", DEEPSEEK, {"fused_padded_mla_attention": True}),
    ("deepseek use_turbo_grouped_mlp (torch grouped_mm)", "patched", DEEPSEEK, TURBO_EXPERTS),
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


def experiment(out_dir: Path, name: str, model: Model, flags: dict[str, Any]) -> Path:
    doc = {"work_group": "bench", "user_name": "moe", "exp_name": name, "workspace": str(out_dir),
           "modules": {"pre_trainer": {"framework": "megatron", "config": "pre_trainer.yaml", "model": model[0],
                                       "overrides": {**TRAINING, **model[1], **flags}}}}
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def train(out_dir: Path, name: str, tree: str, model: Model, flags: dict[str, Any]) -> dict[str, Any] | None:
    """One run's step time, tokens/s, peak memory and losses, or None when it failed (printed)."""
    exp = experiment(out_dir, name, model, flags)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORK / tree), str(REPO)]), "PYTHONWARNINGS": "ignore",
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PRIMUS_ALLOW_CPU_TEST_WHEEL": "1", "CUDA_VISIBLE_DEVICES": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
           "-m", "primus_runtime", "train", "--exp", str(exp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (out_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln]
        print(f"{name}: FAILED: {' | '.join(errors[-3:]) or proc.stderr[-1500:]}", flush=True)
        return None
    records = [json.loads(line) for line in (out_dir / name / "logs" / "metrics.jsonl").read_text().splitlines()]
    step_ms = statistics.mean(r["elapsed_ms"] for r in records[TIMING_WARMUP:])
    return {"step_ms": step_ms, "tokens_per_s": TRAINING["global_batch_size"] * TRAINING["seq_length"] * 1000 / step_ms,
            "peak_gib": max(r.get("max_allocated_gib") or 0.0 for r in records),
            "losses": [r["loss"] for r in records]}


def run(out_dir: Path, labels: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for tree in ("upstream", "patched"):
        compile_helpers(WORK / tree)
    rows = []
    for i, (name, tree, model, flags) in enumerate(CONFIGS):
        if labels and not any(name.startswith(label) for label in labels):
            continue
        if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            print(f"{name}: not run: {NEEDS[name]} is not importable on this machine", flush=True)
            continue
        result = train(out_dir, f"run{i}", tree, model, flags)
        if result is None:
            continue
        rows.append((name, result))
        print(f"{name:52s} {result['step_ms']:9.1f} ms {result['tokens_per_s']:11.0f} tok/s "
              f"{result['peak_gib']:6.2f} GiB  loss {result['losses'][-1]:.4f}", flush=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    by_name = dict(rows)
    for family in ("mixtral", "deepseek"):
        base = by_name.get(f"{family} upstream")
        if base is None:
            continue
        for other, run_ in rows:
            if not other.startswith(family) or run_ is base:
                continue
            worst = max(abs(a - b) / abs(b) for a, b in zip(run_["losses"], base["losses"]))
            print(f"{other} vs {family} upstream: step time {run_['step_ms'] / base['step_ms']:.3f}, "
                  f"tokens/s {run_['tokens_per_s'] / base['tokens_per_s']:.3f}, "
                  f"peak memory {run_['peak_gib'] / base['peak_gib']:.3f}; losses bit-identical: "
                  f"{run_['losses'] == base['losses']}, largest relative difference {worst:.2e}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["stage"]:
        stage()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) >= 3:
        run(Path(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)
