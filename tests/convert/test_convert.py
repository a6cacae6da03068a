"""``python -m primus_runtime convert``: tiny random Hugging Face models made here with transformers
(nothing downloaded), converted, run through HF and through the trainer's GPTModel.

Logits agree within 1e-4 in fp32 (the two compute the same sums in another order: the largest
difference seen is ~2.4e-7 on logits of magnitude ~0.7); converting back gives every tensor bit
for bit; the checkpoint loads at TP=2 and PP=2 under gloo with the same logits. The config checks
run in this process (no megatron); everything that builds the model runs in the cpu-test tree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from tests.procs import fork_server
from tests.runtime.conftest import run_in_tree

HERE = Path(__file__).resolve().parent
PROBE = HERE / "logits_probe.py"
TOLERANCE = 1e-4
#: tiny zoo models (tiny_deepseek_v3.yaml sits next to this file), and what each case changes
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("tiny_llama.yaml", {}),
    "llama_tied_rope_scaling": ("tiny_llama.yaml", {"untie_embeddings_and_output_weights": False,
                                                    "use_rope_scaling": True, "rope_scaling_factor": 8.0,
                                                    "vocab_size": 500}),
    "mixtral": ("tiny_mixtral.yaml", {}),
    "deepseek_v2": ("tiny_deepseek_v2.yaml", {}),
    "deepseek_v3": ("tiny_deepseek_v3.yaml", {}),
}


def write_exp(folder: Path, model: str, overrides: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "tiny_deepseek_v3.yaml", folder)
    doc = {"work_group": "t", "user_name": "t", "exp_name": "convert", "workspace": str(folder),
           "modules": {"pre_trainer": {"framework": "megatron", "config": "pre_trainer.yaml", "model": model,
                                       "overrides": {"distributed_backend": "gloo", "seq_length": 16,
                                                     "max_position_embeddings": 128, **overrides}}}}
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def llama_config(**changes: Any) -> transformers.LlamaConfig:
    """tiny_llama.yaml's model, written out by hand (not by the converter's own table)."""
    values: dict[str, Any] = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5,
                                  rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
                                  tie_word_embeddings=False, max_position_embeddings=128)
    values.update(changes)
    return transformers.LlamaConfig(**values)


def hf_config(exp: Path) -> Any:
    from primus_runtime.config.loader import load_experiment
    from primus_runtime.convert import families

    params = load_experiment(exp).params
    return families.build_hf_config(params, families.family_of(params), "float32")


def make_hf(folder: Path, config: Any, dtype: torch.dtype = torch.float32) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A random model of ``config`` saved in small shards; its tokens and logits."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval().to(dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("e_score_correction_bias", "layernorm.weight", "norm.weight")):
                param.normal_(1.0, 0.1)  # not all ones: a swapped norm must show in the logits
    model.save_pretrained(folder / "hf", max_shard_size="200KB")
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    with torch.no_grad():
        logits = model(tokens).logits
    torch.save(tokens, folder / "tokens.pt")
    return folder / "hf", tokens, logits


def convert(tree: Path, *args: str, check: bool = True) -> Any:
    return run_in_tree(tree, "-m", "primus_runtime", "convert", *args, "--quiet", check=check)


def probe(tree: Path, folder: Path, exp: Path, ckpt: Path, nproc: int = 1, **layout: int) -> torch.Tensor:
    out = folder / f"logits-{nproc}-{'-'.join(f'{k}{v}' for k, v in layout.items())}.pt"
    cli = [arg for key, value in layout.items() for arg in (f"--{key}", str(value))]
    args = [str(PROBE), str(exp), str(ckpt), str(folder / "tokens.pt"), str(out), *cli]
    if nproc > 1:
        fork_server(tree).run_ranks(nproc, *args)
    else:
        run_in_tree(tree, *args)
    return torch.load(out)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update(load_file(file))
    return found


@pytest.fixture(scope="module")
def tree(cpu_trees: dict[str, Path]) -> Path:
    return cpu_trees["patched"]


class Converted:
    """Each case's HF model converted once per module: several tests read the same checkpoint."""

    def __init__(self, tree: Path, root: Path) -> None:
        self.tree, self.root = tree, root
        self.done: dict[str, tuple[Path, Path, Any, torch.Tensor]] = {}

    def __call__(self, case: str) -> tuple[Path, Path, Any, torch.Tensor]:
        """(folder, experiment, HF config, HF logits) of ``case``; the checkpoint is ``folder / "ckpt"``."""
        if case not in self.done:
            folder = self.root / case
            exp = write_exp(folder, *CASES[case])
            config = llama_config() if case == "llama" else hf_config(exp)
            hf, _, expected = make_hf(folder, config)
            assert len(list(hf.glob("*.safetensors"))) > 1  # the sharded form, with its index
            convert(self.tree, "hf-to-mcore", "--hf", str(hf), "--exp", str(exp), "--out", str(folder / "ckpt"))
            self.done[case] = (folder, exp, config, expected)
        return self.done[case]


@pytest.fixture(scope="module")
def converted(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return Converted(tree, tmp_path_factory.mktemp("converted"))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case: str, tree: Path, converted: Converted) -> None:
    folder, exp, config, expected = converted(case)
    logits = probe(tree, folder, exp, folder / "ckpt")
    assert (logits - expected).abs().max().item() < TOLERANCE

    convert(tree, "mcore-to-hf", "--ckpt", str(folder / "ckpt"), "--exp", str(exp), "--out",
            str(folder / "back"), "--max-shard-size", "150KB")
    original, back = tensors(folder / "hf"), tensors(folder / "back")
    assert sorted(original) == sorted(back)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    index = json.loads((folder / "back" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(original) and len(set(index["weight_map"].values())) > 1
    written = transformers.AutoConfig.from_pretrained(str(folder / "back"))
    for key, value in config.to_diff_dict().items():
        if key not in ("transformers_version", "architectures", "dtype", "num_nextn_predict_layers"):
            assert getattr(written, key) == value, key


@pytest.mark.slow
@pytest.mark.parametrize("case, layout", [("llama", {"tensor_model_parallel_size": 2}),
                                          ("llama", {"pipeline_model_parallel_size": 2}),
                                          ("mixtral", {"expert_model_parallel_size": 2})],
                         ids=["llama-tp2", "llama-pp2", "mixtral-ep2"])
def test_other_layouts_give_the_same_logits(case: str, layout: dict[str, int], tree: Path,
                                            converted: Converted) -> None:
    folder, exp, _, expected = converted(case)
    logits = probe(tree, folder, exp, folder / "ckpt", nproc=2, **layout)
    assert (logits - expected).abs().max().item() < TOLERANCE


@pytest.mark.slow
def test_bf16_round_trip_is_bit_identical(tree: Path, tmp_path: Path) -> None:
    exp = write_exp(tmp_path, "tiny_llama.yaml", {"bf16": True})
    hf, _, _ = make_hf(tmp_path, llama_config(dtype="bfloat16"), dtype=torch.bfloat16)
    convert(tree, "hf-to-mcore", "--hf", str(hf), "--exp", str(exp), "--out", str(tmp_path / "ckpt"))
    convert(tree, "mcore-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--exp", str(exp), "--out", str(tmp_path / "back"))
    original, back = tensors(hf), tensors(tmp_path / "back")
    assert sorted(original) == sorted(back)
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], v) for k, v in original.items())
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "back")).dtype == torch.bfloat16


@pytest.mark.slow
def test_missing_and_misshapen_tensors_are_refused_and_nothing_is_written(tree: Path, tmp_path: Path) -> None:
    exp = write_exp(tmp_path, "tiny_llama.yaml", {})
    hf, _, _ = make_hf(tmp_path, llama_config())
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    dropped = "model.layers.1.mlp.up_proj.weight"
    shard = hf / index["weight_map"][dropped]
    kept = {k: v for k, v in load_file(shard).items() if k != dropped}
    from safetensors.torch import save_file

    save_file(kept, str(shard), metadata={"format": "pt"})
    proc = convert(tree, "hf-to-mcore", "--hf", str(hf), "--exp", str(exp), "--out", str(tmp_path / "ckpt"),
                   check=False)
    assert proc.returncode == 6 and f"missing {dropped}" in proc.stderr
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.glob(".ckpt*"))

    kept[dropped] = torch.zeros(64, 128)
    save_file(kept, str(shard), metadata={"format": "pt"})
    proc = convert(tree, "hf-to-mcore", "--hf", str(hf), "--exp", str(exp), "--out", str(tmp_path / "ckpt"),
                   check=False)
    assert proc.returncode == 6 and f"{dropped} is (64, 128), the experiment's model needs (128, 64)" in proc.stderr
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.glob(".ckpt*"))


def test_config_mismatches_are_each_named_before_anything_is_written(tmp_path: Path) -> None:
    from primus_runtime.config.loader import load_experiment
    from primus_runtime.convert.cli import hf_to_mcore
    from primus_runtime.convert.errors import ConversionError

    exp = write_exp(tmp_path, "tiny_llama.yaml", {})
    hf = tmp_path / "hf"
    hf.mkdir()
    llama_config(num_key_value_heads=4, vocab_size=600, tie_word_embeddings=True,
                 rope_parameters={"rope_theta": 500000.0, "rope_type": "default"}).save_pretrained(str(hf))
    with pytest.raises(ConversionError) as caught:
        hf_to_mcore(hf, load_experiment(exp).params, tmp_path / "ckpt")
    message = str(caught.value)
    for part in ("num_key_value_heads is 4; the experiment has 2", "vocab_size is 600; the experiment has 512",
                 "tie_word_embeddings is True; the experiment has False",
                 "rope rope_theta is 500000.0; the experiment has 10000.0"):
        assert part in message
    assert not (tmp_path / "ckpt").exists()


def test_quantized_checkpoints_are_refused(tmp_path: Path) -> None:
    from primus_runtime.config.loader import load_experiment
    from primus_runtime.convert.cli import hf_to_mcore
    from primus_runtime.convert.errors import ConversionError

    exp = write_exp(tmp_path, "tiny_llama.yaml", {})
    config = llama_config()
    config.quantization_config = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    config.save_pretrained(str(tmp_path / "hf"))
    with pytest.raises(ConversionError, match="a quantized checkpoint"):
        hf_to_mcore(tmp_path / "hf", load_experiment(exp).params, tmp_path / "ckpt")


def test_only_multi_token_prediction_layers_may_be_left_over(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from primus_runtime.convert.cli import _check_names
    from primus_runtime.convert.errors import ConversionError
    from primus_runtime.convert.rules import copy

    rules = [copy("decoder.layers.0.input_layernorm.weight", "model.layers.0.input_layernorm.weight")]
    _check_names(["model.layers.0.input_layernorm.weight", "model.layers.1.eh_proj.weight"], rules, 1, tmp_path)
    assert "1 tensors of multi-token-prediction layers (model.layers.1.*) are not converted" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="not part of the experiment's model: model.layers.0.extra.weight"):
        _check_names(["model.layers.0.input_layernorm.weight", "model.layers.0.extra.weight"], rules, 1, tmp_path)
    with pytest.raises(ConversionError, match="missing model.layers.0.input_layernorm.weight"):
        _check_names([], rules, 1, tmp_path)


def test_an_existing_output_is_refused(tmp_path: Path) -> None:
    from primus_runtime.convert.cli import atomic_folder
    from primus_runtime.convert.errors import ConversionError

    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match="exists; name a new folder"), atomic_folder(tmp_path / "out"):
        pass
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "fresh") as staging:
        (staging / "half-written").write_text("x")
        raise RuntimeError("stop")
    assert not (tmp_path / "fresh").exists() and [p.name for p in tmp_path.iterdir()] == ["out"]


#: public Hugging Face config values of zoo models (from their config.json), which the zoo must reproduce
PUBLISHED = {
    "llama2_7B": {"num_key_value_heads": 32, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}},
    "llama3.1_8B": {"num_key_value_heads": 8, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3",
                                                                  "factor": 8.0}},
    "llama3.2_1B": {"head_dim": 64, "tie_word_embeddings": True, "intermediate_size": 8192},
    "mixtral_8x7B_v0.1": {"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 14336},
    "deepseek_v2_lite": {"first_k_dense_replace": 1, "n_shared_experts": 2, "q_lora_rank": None,
                         "topk_method": "greedy", "moe_intermediate_size": 1408},
    "deepseek_v2": {"topk_method": "group_limited_greedy", "n_group": 8, "topk_group": 3,
                    "routed_scaling_factor": 16.0},
    "deepseek_v3": {"first_k_dense_replace": 3, "n_shared_experts": 1, "n_group": 8, "topk_group": 4,
                    "routed_scaling_factor": 2.5, "rope_parameters": {"rope_type": "yarn", "factor": 40.0,
                                                                      "mscale": 1.0, "mscale_all_dim": 1.0}},
}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_zoo_models_have_their_published_hf_config(model: str) -> None:
    from primus_runtime.config.loader import resolve_model
    from primus_runtime.convert import families

    params = resolve_model(f"{model}.yaml")
    config = families.build_hf_config(params, families.family_of(params), "bfloat16")  # checks itself too
    for key, value in PUBLISHED[model].items():
        have = families.hf_rope(config) if key == "rope_parameters" else getattr(config, key)
        assert have == value if key != "rope_parameters" else {k: have[k] for k in value} == value, key
