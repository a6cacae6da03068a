"""The real thing: build the wheel from the pinned upstream, install it into a fresh virtual
environment, import megatron.core there and read the stamped version and the manifest."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from rewriter.cli import main

REPO = Path(__file__).resolve().parents[2]
PINNED = "55ac7082517c3878ae653c07c09c534b8aed49f6"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "out"
    assert main(["build", "--root", str(REPO), "--upstream", PINNED[:12], "--out", str(out), "-q"]) == 0
    return out


def test_outputs(out: Path) -> None:
    """The wheel, manifest, report and every diff are there; the manifest says what was built."""
    wheels = list(out.glob("megatron_core-0.16.1+primus.v0.4.0-*.whl"))
    assert len(wheels) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["upstream"]["commit"] == PINNED
    assert manifest["upstream"]["tag"] == "core_v0.16.1"
    assert manifest["package"]["version"] == "0.16.1+primus.v0.4.0"
    assert {p["id"]: p["status"] for p in manifest["patches"]} == {
        "disable_primus_topk_router": "applied",
        "moe_router_force_load_balancing": "applied",
        "moe_permute_fusion": "retired",  # upstream defines it since 0.11
        "moe_permute_fusion_portable": "applied",
        "use_deprecated_20241209_moe_layer": "applied",
        "fused_padded_mla_attention": "applied",
        "no_fp8_weight_transpose_cache": "applied",
        "moe_use_fused_router_with_aux_score": "applied",
        "enable_primus_turbo": "applied",
        "use_turbo_attention": "applied",
        "use_turbo_grouped_mlp": "applied",
        "use_turbo_deepep": "applied",
        "dump_pp_data": "applied",
        "decoder_pipeline_manual_split_list": "retired",  # upstream's pipeline_model_parallel_layout
        "patch_zero_bubble": "applied",
        # declared for the manifest and the patch notes; primus_runtime implements them
        "trainer_trackers": "runtime",
        "trainer_resume_and_saving": "runtime",
        "trainer_compile_dependencies": "runtime",
        "trainer_pp_warmup": "runtime",
        "trainer_profiler_cpu_activity": "runtime",
        "trainer_memory_info": "runtime",
        "trainer_mlflow": "runtime",
    }
    for version in ("v0.1.0", "v0.2.0", "v0.3.0", "v0.4.0"):
        assert (out / "diffs" / "versions" / f"{version}.upstream.diff").is_file()
        assert (out / "diffs" / "versions" / f"{version}.previous.diff").is_file()
    patch_diff = (out / "diffs" / "patches" / "v0.1.0" / "002-moe_router_force_load_balancing.diff").read_text()
    assert "+            probs, routing_map = force_even_routing(probs, routing_map, self.topk)" in patch_diff
    v040 = (out / "diffs" / "versions" / "v0.4.0.previous.diff").read_text()
    assert "+++ b/megatron/core/_primus/turbo/deepep.py" in v040


def test_installs_and_imports_in_a_fresh_venv(out: Path, tmp_path: Path) -> None:
    """pip installs the wheel (torch pinned to the CPU build) and megatron.core reports the stamp."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    wheel = next(out.glob("*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel), "torch==2.13.0"], check=True)
    code = (
        "import json, megatron.core, megatron.core._primus as primus\n"
        "from importlib.metadata import version\n"
        "m = primus.manifest()\n"
        "print(json.dumps({'module': megatron.core.__version__, 'dist': version('megatron-core'),"
        " 'patchset': m['patchset']['version'], 'flags': sorted(primus.FLAGS)}))\n"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {
        "module": "0.16.1+primus.v0.4.0",
        "dist": "0.16.1+primus.v0.4.0",
        "patchset": "v0.4.0",
        "flags": sorted(["disable_primus_topk_router", "moe_router_force_load_balancing",
                         "moe_router_force_load_balancing_type", "moe_permute_fusion", "fused_padded_mla_attention",
                         "use_deprecated_20241209_moe_layer", "no_fp8_weight_transpose_cache",
                         "moe_use_fused_router_with_aux_score", "enable_primus_turbo", "use_turbo_attention",
                         "use_turbo_grouped_mlp", "use_turbo_grouped_gemm", "use_turbo_deepep", "turbo_deepep_num_cu",
                         "turbo_deepep_use_comm_stream", "turbo_sync_free_moe_stage", "dump_pp_data",
                         "decoder_pipeline_manual_split_list", "patch_zero_bubble",
                         "disable_tensorboard", "disable_wandb",
                         "auto_continue_train", "disable_last_saving", "disable_compile_dependencies", "pp_warmup",
                         "disable_profiler_activity_cpu", "use_rocm_mem_info", "use_rocm_mem_info_iters",
                         "disable_mlflow"]),
    }


def test_rebuild_is_byte_identical(out: Path, tmp_path: Path) -> None:
    """Same inputs, same bytes: a build without any cache gives the same wheel, manifest and diffs."""
    again = tmp_path / "again"
    assert main(["build", "--root", str(REPO), "--upstream", PINNED, "--out", str(again), "--no-cache", "-q"]) == 0
    for name in [next(out.glob("*.whl")).name, "manifest.json"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    diffs = sorted(p.relative_to(out) for p in (out / "diffs").rglob("*") if p.is_file())
    assert diffs and diffs == sorted(p.relative_to(again) for p in (again / "diffs").rglob("*") if p.is_file())
    for path in diffs:
        assert (again / path).read_bytes() == (out / path).read_bytes(), path
