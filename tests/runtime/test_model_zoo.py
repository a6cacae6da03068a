"""The model zoo: every config resolves, maps onto megatron.core and has its published size.

Expected counts are computed here from the models' Hugging Face ``config.json`` numbers (written
out below, independent of our YAML files), so a wrong number in a zoo file, or a wrong mapping,
shows as a mismatch with megatron.core's own count on the meta device. The published sizes
(model cards, rounded) must agree within 0.5%, which is looser than their rounding (at most
0.1%, DeepSeek-V2's "236B" for 235.74B) and far tighter than any real architecture mistake (one
missing norm is ~1e-6, one missing expert in a layer ~0.2%).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from primus_runtime.config.loader import resolve_model
from primus_runtime.model.config_map import moe_layer_pattern, transformer_config
from primus_runtime.model.errors import ModelConfigError
from tests.runtime.conftest import REPO, run_in_tree

ZOO_DIR = REPO / "configs" / "models" / "megatron"
TINY = ("tiny_llama", "tiny_mixtral", "tiny_deepseek_v2")


def llama(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv_heads: int,
          experts: int = 0, tied: bool = False) -> int:
    """HF LlamaForCausalLM / MixtralForCausalLM: RMSNorm, no biases, untied embeddings unless ``tied``."""
    head = hidden // heads
    attn = 2 * hidden * hidden + 2 * hidden * kv_heads * head
    mlp = 3 * hidden * inter if not experts else experts * 3 * hidden * inter + experts * hidden  # + router
    return layers * (attn + mlp + 2 * hidden) + hidden + (1 if tied else 2) * vocab * hidden


def deepseek(vocab: int, hidden: int, layers: int, dense_layers: int, heads: int, q_lora: int | None,
             kv_lora: int, nope: int, rope: int, v: int, inter: int, moe_inter: int, experts: int,
             shared: int) -> int:
    """HF DeepseekV2/V3ForCausalLM without MTP. V3's e_score_correction_bias (256 floats per MoE
    layer) is left out: megatron.core keeps it as a buffer, and the published 671B exclude it."""
    q = hidden * heads * (nope + rope) if q_lora is None else hidden * q_lora + q_lora + q_lora * heads * (nope + rope)
    attn = q + hidden * (kv_lora + rope) + kv_lora + kv_lora * heads * (nope + v) + heads * v * hidden
    dense = 3 * hidden * inter
    moe = (experts + shared) * 3 * hidden * moe_inter + experts * hidden
    return (dense_layers * (attn + dense + 2 * hidden) + (layers - dense_layers) * (attn + moe + 2 * hidden)
            + hidden + 2 * vocab * hidden)


#: name -> (count from the HF config, published size in billions)
ZOO: dict[str, tuple[int, float]] = {
    "llama2_7B": (llama(32000, 4096, 11008, 32, 32, 32), 6.74),
    "llama2_70B": (llama(32000, 8192, 28672, 80, 64, 8), 68.98),
    "llama3_8B": (llama(128256, 4096, 14336, 32, 32, 8), 8.03),
    "llama3_70B": (llama(128256, 8192, 28672, 80, 64, 8), 70.55),
    "llama3.1_8B": (llama(128256, 4096, 14336, 32, 32, 8), 8.03),
    "llama3.1_70B": (llama(128256, 8192, 28672, 80, 64, 8), 70.55),
    "llama3.2_1B": (llama(128256, 2048, 8192, 16, 32, 8, tied=True), 1.24),
    "llama3.2_3B": (llama(128256, 3072, 8192, 28, 24, 8, tied=True), 3.21),
    "llama3.1_405B": (llama(128256, 16384, 53248, 126, 128, 8), 405.85),
    "mixtral_8x7B_v0.1": (llama(32000, 4096, 14336, 32, 32, 8, experts=8), 46.70),
    "mixtral_8x22B_v0.1": (llama(32000, 6144, 16384, 56, 48, 8, experts=8), 140.62),
    "deepseek_v2_lite": (deepseek(102400, 2048, 27, 1, 16, None, 512, 128, 64, 128, 10944, 1408, 64, 2), 15.7),
    "deepseek_v2": (deepseek(102400, 5120, 60, 1, 128, 1536, 512, 128, 64, 128, 12288, 1536, 160, 2), 236.0),
    "deepseek_v3": (deepseek(129280, 7168, 61, 3, 128, 1536, 512, 128, 64, 128, 18432, 2048, 256, 1), 671.0),
}

#: run in a megatron tree: map and count every model; build the tiny ones for real and train a step
ZOO_SCRIPT = """
import json, sys, time, torch
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from primus_runtime.config.loader import resolve_model
from primus_runtime.model.builder import build_gpt_model, layer_spec
from primus_runtime.model.config_map import transformer_config
from primus_runtime.model.param_count import world_of_one, count_parameters

report = {}
for name in sys.argv[1].split(","):
    params = resolve_model(name + ".yaml")
    config = transformer_config(params)
    start = time.perf_counter()
    count = count_parameters(params)
    report[name] = dict(config=type(config).__name__, experts=config.num_moe_experts, freq=config.moe_layer_freq,
                        eps=config.layernorm_epsilon, glu=config.gated_linear_unit, groups=config.num_query_groups,
                        q_lora=getattr(config, "q_lora_rank", "absent"), count=count,
                        seconds=round(time.perf_counter() - start, 2))
for name in sys.argv[2].split(","):
    params = resolve_model(name + ".yaml")
    # bias_swiglu_fusion off: torch.compile of the fused kernel takes ~10 s per model on a CPU
    config = transformer_config(params, use_cpu_initialization=True, bias_swiglu_fusion=False)
    with world_of_one():
        model_parallel_cuda_manual_seed(1234)
        model = build_gpt_model(params, config)
        tokens = torch.randint(0, params["vocab_size"], (2, 16))
        loss = model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens).mean()
        loss.backward()
        report[name]["loss"] = float(loss)
        report[name]["spec"] = layer_spec(params, config)[1]
print("ZOO" + json.dumps(report))
"""


def zoo_files() -> list[Path]:
    return sorted(p for p in ZOO_DIR.glob("*.yaml") if p.name != "language_model.yaml")


def test_zoo_is_complete_and_every_file_starts_with_bases() -> None:
    names = {p.stem for p in zoo_files()}
    assert set(ZOO) | set(TINY) <= names
    for path in zoo_files():
        first = next(line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
        assert first == "bases:", path.name


@pytest.mark.parametrize("name", [*ZOO, *TINY])
def test_every_model_resolves(name: str) -> None:
    params = resolve_model(f"{name}.yaml")
    for key in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_position_embeddings"):
        assert isinstance(params[key], int), key
    if params["num_experts"]:
        assert moe_layer_pattern(params["moe_layer_freq"], params["num_layers"])
    if name in TINY:
        assert params["hidden_size"] <= 128 and params["num_layers"] <= 4 and params["vocab_size"] <= 512


def test_moe_layer_freq_forms() -> None:
    assert moe_layer_pattern(1, 4) == 1
    assert moe_layer_pattern("2", 4) == 2
    assert moe_layer_pattern("[0]*1+[1]*3", 4) == [0, 1, 1, 1]
    assert moe_layer_pattern("([0,1]*2)", 4) == [0, 1, 0, 1]
    assert moe_layer_pattern([1, 0, 1, 1], 4) == [1, 0, 1, 1]
    with pytest.raises(ModelConfigError, match="moe_layer_freq lists 3 layers but num_layers is 4"):
        moe_layer_pattern("[0]*1+[1]*2", 4)
    with pytest.raises(ModelConfigError, match="moe_layer_freq .*: expected an int, a list"):
        moe_layer_pattern("__import__('os')", 4)


@pytest.mark.parametrize(("change", "message"), [
    ({"hidden_size": None}, "hidden_size must be a positive integer"),
    ({"bf16": True, "fp16": True}, "bf16 and fp16 are both true"),
    ({"moe_layer_freq": "[0]*1+[1]*5"}, "moe_layer_freq lists 6 layers but num_layers is 2"),
    ({"pipeline_model_parallel_size": 2, "num_layers_per_virtual_pipeline_stage": 2},
     "num_layers_per_virtual_pipeline_stage=2 must divide the 1 layers"),
])
def test_bad_configs_name_the_key(change: dict[str, Any], message: str) -> None:
    """Checked before megatron.core is imported, so these run in the test process itself."""
    with pytest.raises(ModelConfigError, match=message):
        transformer_config({**resolve_model("tiny_mixtral.yaml"), **change})


@pytest.fixture(scope="module")
def zoo_report(cpu_trees: dict[str, Path]) -> dict[str, dict[str, Any]]:
    proc = run_in_tree(cpu_trees["patched"], "-c", ZOO_SCRIPT, ",".join([*ZOO, *TINY]), ",".join(TINY))
    line = next(line for line in proc.stdout.splitlines() if line.startswith("ZOO"))
    return json.loads(line[3:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_matches_the_published_size(zoo_report: dict[str, dict[str, Any]], name: str) -> None:
    expected, published = ZOO[name]
    count = zoo_report[name]["count"]
    assert count == expected
    assert abs(count / 1e9 - published) / published < 0.005


@pytest.mark.slow
def test_architectures_map_onto_megatron_core(zoo_report: dict[str, dict[str, Any]]) -> None:
    llama2, llama3, mixtral = zoo_report["llama2_7B"], zoo_report["llama3_8B"], zoo_report["mixtral_8x7B_v0.1"]
    assert (llama2["config"], llama2["glu"], llama2["groups"], llama2["eps"]) == ("TransformerConfig", True, 32, 1e-5)
    assert (llama3["groups"], mixtral["experts"], mixtral["freq"]) == (8, 8, 1)
    v3, lite = zoo_report["deepseek_v3"], zoo_report["deepseek_v2_lite"]
    assert (v3["config"], v3["experts"], v3["freq"], v3["eps"]) == ("MLATransformerConfig", 256, [0] * 3 + [1] * 58, 1e-6)
    assert lite["q_lora"] is None and lite["freq"] == [0] + [1] * 26


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_tiny_models_build_and_train_a_step_on_cpu(zoo_report: dict[str, dict[str, Any]], name: str) -> None:
    report = zoo_report[name]
    assert 5.0 < report["loss"] < 7.5  # about ln(512) = 6.24 at initialisation
    assert report["spec"].startswith("local layer spec")
    assert ("SDPA" in report["spec"]) == (name == "tiny_deepseek_v2")


FLAG_SCRIPT = """
import json
from primus_runtime.config.loader import resolve_model
from primus_runtime.model.config_map import transformer_config
flag = "moe_router_force_load_balancing_type"
params = {**resolve_model("tiny_mixtral.yaml"), flag: "even"}
seen = lambda config: getattr(config, flag, "absent")
print("FLAG" + json.dumps([seen(transformer_config(params)),
                           seen(transformer_config(params, fields_available=set(params) - {flag}))]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("tree", "expected"), [("upstream", ["absent", "absent"]), ("patched", ["even", "uniform"])])
def test_flag_fields_pass_only_where_the_config_has_them(cpu_trees: dict[str, Path], tree: str,
                                                         expected: list[str]) -> None:
    """Upstream has no such field: the key is dropped, no error. Patched: it is set, unless narrowed away."""
    proc = run_in_tree(cpu_trees[tree], "-c", FLAG_SCRIPT)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("FLAG"))
    assert json.loads(line[4:]) == expected


GROUPED_SCRIPT = """
import json
from primus_runtime.config.loader import resolve_model
from primus_runtime.model.builder import layer_spec
from primus_runtime.model.config_map import transformer_config
from primus_runtime.model.errors import ModelConfigError
from primus_runtime.model.param_count import world_of_one
params = {**resolve_model("tiny_mixtral.yaml"), "moe_grouped_gemm": True}
turbo = {**params, "enable_primus_turbo": True, "use_turbo_grouped_mlp": True}
with world_of_one():
    try:
        off = layer_spec(params, transformer_config(params), use_te=False)[1]
    except ModelConfigError as exc:
        off = str(exc)
    on = layer_spec(turbo, transformer_config(turbo), use_te=False)[1]
print("GROUPED" + json.dumps([off, on]))
"""


@pytest.mark.slow
def test_moe_grouped_gemm_without_te_runs_on_the_turbo_grouped_experts(cpu_trees: dict[str, Path]) -> None:
    """Primus's MoE configs set moe_grouped_gemm: without TransformerEngine or the grouped_gemm
    package it is refused, unless use_turbo_grouped_mlp (with enable_primus_turbo) builds the experts."""
    proc = run_in_tree(cpu_trees["patched"], "-c", GROUPED_SCRIPT)
    off, on = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("GROUPED"))[7:])
    assert off.startswith("moe_grouped_gemm needs TransformerEngine or the grouped_gemm package")
    assert on.startswith("local layer spec (PyTorch modules), grouped-GEMM experts on the Primus Turbo backend (torch ")
