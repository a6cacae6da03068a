"""The model families the converter knows: their Hugging Face config, and their tensor names.

A family is picked from the experiment (multi-latent attention: DeepSeek-V2 or -V3 by its router;
experts: Mixtral; else Llama). :func:`hf_config_values` gives, from the experiment's params,
the value each Hugging Face config field must have: the same table checks a Hugging Face
config before ``hf-to-mcore`` writes anything (:func:`mismatches`) and builds the config that
``mcore-to-hf`` writes, so the two directions cannot disagree. :func:`rules` maps each model
parameter to its Hugging Face tensors, by name patterns over the parameters the model has.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from primus_runtime.convert.errors import ConversionError
from primus_runtime.convert.rules import Rule, concat, copy, grouped_qkv, padded_rows

LLAMA, MIXTRAL, DEEPSEEK_V2, DEEPSEEK_V3 = "llama", "mixtral", "deepseek_v2", "deepseek_v3"

#: experiment keys every family needs at these values (a Hugging Face config cannot say otherwise)
_COMMON_NEEDS: dict[str, Any] = {"normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope",
                                 "add_bias_linear": False, "apply_layernorm_1p": False,
                                 "rotary_interleaved": False}
_NEEDS: dict[str, dict[str, Any]] = {
    LLAMA: {"qk_layernorm": False, "add_qkv_bias": False},
    MIXTRAL: {"qk_layernorm": False, "add_qkv_bias": False, "moe_router_score_function": "softmax",
              "moe_router_pre_softmax": False, "moe_shared_expert_intermediate_size": None},
    DEEPSEEK_V2: {"moe_router_score_function": "softmax", "moe_router_pre_softmax": True},
    DEEPSEEK_V3: {"moe_router_score_function": "sigmoid", "moe_router_enable_expert_bias": True},
}
#: megatron's Llama 3 RoPE scaling constants (only the factor is an option)
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def family_of(params: Mapping[str, Any]) -> str:
    if params.get("multi_latent_attention"):
        return DEEPSEEK_V3 if params.get("moe_router_score_function") == "sigmoid" else DEEPSEEK_V2
    return MIXTRAL if params.get("num_experts") else LLAMA


def experiment_problems(params: Mapping[str, Any], family: str) -> list[str]:
    """Experiment settings no checkpoint of ``family`` can have (a LayerNorm Llama, a Mixtral with a shared expert)."""
    needs = {**_COMMON_NEEDS, **_NEEDS[family]}
    return [f"{key} is {params.get(key)!r}; a {family} checkpoint needs {value!r}"
            for key, value in needs.items() if params.get(key) != value]


def _first_dense_layers(params: Mapping[str, Any]) -> int:
    from primus_runtime.model.config_map import moe_layer_pattern

    layers = int(params["num_layers"])
    pattern = moe_layer_pattern(params.get("moe_layer_freq", 1), layers)
    if isinstance(pattern, int):
        pattern = [1 if i % pattern == 0 else 0 for i in range(layers)]
    dense = pattern.index(1) if 1 in pattern else layers
    if pattern != [0] * dense + [1] * (layers - dense):
        raise ConversionError(f"moe_layer_freq {params.get('moe_layer_freq')!r}: a DeepSeek checkpoint has dense "
                              f"layers first, then only MoE layers")
    return dense


def _rope(params: Mapping[str, Any], family: str) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_theta": float(params.get("rotary_base", 10000))}
    if family in (LLAMA, MIXTRAL) and params.get("use_rope_scaling"):
        rope.update(rope_type="llama3", factor=float(params.get("rope_scaling_factor", 8.0)), **_LLAMA3_ROPE)
    elif family in (DEEPSEEK_V2, DEEPSEEK_V3) and params.get("rope_type") == "yarn":
        rope.update(rope_type="yarn", factor=float(params["rotary_scaling_factor"]),
                    original_max_position_embeddings=int(params["original_max_position_embeddings"]),
                    beta_fast=float(params["beta_fast"]), beta_slow=float(params["beta_slow"]),
                    mscale=float(params["mscale"]), mscale_all_dim=float(params["mscale_all_dim"]))
    else:
        rope["rope_type"] = "default"
    return rope


def hf_config_values(params: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Every Hugging Face config field that decides the weights or the numbers, as the experiment has it."""
    from primus_runtime.model.config_map import ffn_hidden_size

    heads, hidden = int(params["num_attention_heads"]), int(params["hidden_size"])
    values: dict[str, Any] = {
        "vocab_size": params["vocab_size"], "hidden_size": hidden, "num_hidden_layers": params["num_layers"],
        "num_attention_heads": heads, "rms_norm_eps": float(params["norm_epsilon"]),
        "tie_word_embeddings": not params.get("untie_embeddings_and_output_weights", False),
        "intermediate_size": ffn_hidden_size(params), "hidden_act": "silu", "rope_parameters": _rope(params, family),
    }
    if family in (LLAMA, MIXTRAL):
        values["num_key_value_heads"] = (params["num_query_groups"] if params.get("group_query_attention")
                                         else heads)
        values["head_dim"] = params.get("kv_channels") or hidden // heads
    if family == LLAMA:
        values.update(attention_bias=False, mlp_bias=False)
    if family == MIXTRAL:
        values.update(num_local_experts=params["num_experts"], num_experts_per_tok=params["moe_router_topk"],
                      intermediate_size=params.get("moe_ffn_hidden_size") or ffn_hidden_size(params))
    if family in (DEEPSEEK_V2, DEEPSEEK_V3):
        moe_ffn = int(params.get("moe_ffn_hidden_size") or ffn_hidden_size(params))
        shared = params.get("moe_shared_expert_intermediate_size") or 0
        if shared % moe_ffn:
            raise ConversionError(f"moe_shared_expert_intermediate_size {shared} is not a whole number of "
                                  f"experts of moe_ffn_hidden_size {moe_ffn}")
        values.update(
            num_key_value_heads=heads, q_lora_rank=params.get("q_lora_rank"), kv_lora_rank=params["kv_lora_rank"],
            qk_nope_head_dim=params["qk_head_dim"], qk_rope_head_dim=params["qk_pos_emb_head_dim"],
            v_head_dim=params["v_head_dim"], moe_intermediate_size=moe_ffn, n_routed_experts=params["num_experts"],
            num_experts_per_tok=params["moe_router_topk"], n_shared_experts=shared // moe_ffn,
            first_k_dense_replace=_first_dense_layers(params), attention_bias=False,
            routed_scaling_factor=float(params.get("moe_router_topk_scaling_factor") or 1.0))
    if family == DEEPSEEK_V2 and params.get("moe_router_num_groups"):  # DeepSeek-V2: the best experts of the best groups
        values.update(topk_method="group_limited_greedy", n_group=params["moe_router_num_groups"],
                      topk_group=params["moe_router_group_topk"], norm_topk_prob=False)
    elif family == DEEPSEEK_V2:  # V2-Lite
        values.update(topk_method="greedy", norm_topk_prob=False)
    if family == DEEPSEEK_V3:
        values.update(n_group=params.get("moe_router_num_groups") or 1,
                      topk_group=params.get("moe_router_group_topk") or 1, norm_topk_prob=True)
    return values


def hf_rope(config: Any) -> dict[str, Any]:
    """A Hugging Face config's RoPE settings (``rope_parameters`` of transformers 5, ``rope_theta`` and
    ``rope_scaling`` of transformers 4), ``rope_type`` always named."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if not rope:
        rope = {"rope_theta": getattr(config, "rope_theta", 10000.0), **(getattr(config, "rope_scaling", None) or {})}
    rope.setdefault("rope_type", rope.pop("type", "default"))
    return rope


def mismatches(config: Any, params: Mapping[str, Any], family: str) -> list[str]:
    """Each difference between a Hugging Face config and the experiment, on one line each."""
    if config.model_type != family:
        return [f"model_type is {config.model_type!r}; the experiment describes a {family} model"]
    found = experiment_problems(params, family)
    for key, want in hf_config_values(params, family).items():
        if key == "rope_parameters":
            have_rope = hf_rope(config)
            found += [f"rope {k} is {have_rope.get(k)!r}; the experiment has {v!r}"
                      for k, v in want.items() if not _same(have_rope.get(k), v)]
            continue
        have = getattr(config, key, None)
        if key == "head_dim" and have is None:  # transformers 4 leaves it unset when it is hidden / heads
            have = config.hidden_size // config.num_attention_heads
        if not _same(have, want):
            found.append(f"{key} is {have!r}; the experiment has {want!r}")
    return found


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
        return float(have) == want
    return bool(have == want)


def config_class(family: str) -> Any:
    import transformers

    return {LLAMA: transformers.LlamaConfig, MIXTRAL: transformers.MixtralConfig,
            DEEPSEEK_V2: transformers.DeepseekV2Config, DEEPSEEK_V3: transformers.DeepseekV3Config}[family]


def build_hf_config(params: Mapping[str, Any], family: str, dtype: str) -> Any:
    """The Hugging Face config of the experiment's model (what ``mcore-to-hf`` writes)."""
    values = hf_config_values(params, family)
    architecture = {LLAMA: "LlamaForCausalLM", MIXTRAL: "MixtralForCausalLM", DEEPSEEK_V2: "DeepseekV2ForCausalLM",
                    DEEPSEEK_V3: "DeepseekV3ForCausalLM"}[family]
    config = config_class(family)(**values, max_position_embeddings=params["max_position_embeddings"],
                                  architectures=[architecture], dtype=dtype)
    if family == DEEPSEEK_V3:
        config.num_nextn_predict_layers = 0  # the trainer's model has no MTP layers to write
    wrong = mismatches(config, params, family)
    if wrong:  # a transformers release that reads a field differently: refuse rather than write a wrong config
        raise ConversionError(f"transformers {_version()} builds a {family} config that differs from the "
                              f"experiment: {'; '.join(wrong)}")
    return config


def _version() -> str:
    import transformers

    return str(transformers.__version__)


#: per-layer parameter suffixes (model side) and their Hugging Face names, ``{e}`` an expert index
_ATTENTION = {"input_layernorm.weight": "input_layernorm.weight",
              "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
              "self_attention.linear_proj.weight": "self_attn.o_proj.weight"}
_MLA = {"self_attention.linear_q_proj.weight": "self_attn.q_proj.weight",
        "self_attention.linear_q_down_proj.weight": "self_attn.q_a_proj.weight",
        "self_attention.q_layernorm.weight": "self_attn.q_a_layernorm.weight",
        "self_attention.linear_q_up_proj.weight": "self_attn.q_b_proj.weight",
        "self_attention.linear_kv_down_proj.weight": "self_attn.kv_a_proj_with_mqa.weight",
        "self_attention.kv_layernorm.weight": "self_attn.kv_a_layernorm.weight",
        "self_attention.linear_kv_up_proj.weight": "self_attn.kv_b_proj.weight"}
_DENSE_MLP = {"mlp.linear_fc1.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
              "mlp.linear_fc2.weight": ("mlp.down_proj.weight",)}
_MIXTRAL_MOE = {"mlp.router.weight": ("block_sparse_moe.gate.weight",),
                "mlp.experts.local_experts.{e}.linear_fc1.weight": ("block_sparse_moe.experts.{e}.w1.weight",
                                                                    "block_sparse_moe.experts.{e}.w3.weight"),
                "mlp.experts.local_experts.{e}.linear_fc2.weight": ("block_sparse_moe.experts.{e}.w2.weight",)}
_DEEPSEEK_MOE = {"mlp.router.weight": ("mlp.gate.weight",),
                 "mlp.router.expert_bias": ("mlp.gate.e_score_correction_bias",),
                 "mlp.experts.local_experts.{e}.linear_fc1.weight": ("mlp.experts.{e}.gate_proj.weight",
                                                                     "mlp.experts.{e}.up_proj.weight"),
                 "mlp.experts.local_experts.{e}.linear_fc2.weight": ("mlp.experts.{e}.down_proj.weight",),
                 "mlp.shared_experts.linear_fc1.weight": ("mlp.shared_experts.gate_proj.weight",
                                                          "mlp.shared_experts.up_proj.weight"),
                 "mlp.shared_experts.linear_fc2.weight": ("mlp.shared_experts.down_proj.weight",)}
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"\.(\d+)\.")


def rules(params: Mapping[str, Any], family: str, names: Iterable[str], padded_vocab: int) -> list[Rule]:
    """One rule per model parameter in ``names``; a parameter no rule covers is a converter bug, said plainly."""
    per_layer: dict[str, tuple[str, ...]] = {k: (v,) for k, v in _ATTENTION.items()}
    if family in (DEEPSEEK_V2, DEEPSEEK_V3):
        per_layer.update({k: (v,) for k, v in _MLA.items()})
    per_layer.update(_DENSE_MLP)
    per_layer.update(_MIXTRAL_MOE if family == MIXTRAL else _DEEPSEEK_MOE if family != LLAMA else {})
    vocab = int(params["vocab_size"])
    found: list[Rule] = []
    for name in names:
        rule = _global_rule(name, vocab, padded_vocab) or _layer_rule(name, params, per_layer)
        if rule is None:
            raise ConversionError(f"the {family} converter has no Hugging Face name for the model's {name}")
        found.append(rule)
    return found


def _global_rule(name: str, vocab: int, padded: int) -> Rule | None:
    if name == "embedding.word_embeddings.weight":
        return padded_rows(name, "model.embed_tokens.weight", vocab, padded)
    if name == "output_layer.weight":
        return padded_rows(name, "lm_head.weight", vocab, padded)
    if name == "decoder.final_layernorm.weight":
        return copy(name, "model.norm.weight")
    return None


def _layer_rule(name: str, params: Mapping[str, Any], per_layer: Mapping[str, tuple[str, ...]]) -> Rule | None:
    match = _LAYER.fullmatch(name)
    if match is None:
        return None
    layer, suffix = match.groups()
    prefix = f"model.layers.{layer}."
    if suffix == "self_attention.linear_qkv.weight":
        heads = int(params["num_attention_heads"])
        groups = int(params["num_query_groups"]) if params.get("group_query_attention") else heads
        head_dim = int(params.get("kv_channels") or int(params["hidden_size"]) // heads)
        q, k, v = (f"{prefix}self_attn.{p}_proj.weight" for p in "qkv")
        return grouped_qkv(name, q, k, v, heads, groups, head_dim)
    expert = _EXPERT.search(suffix) if suffix.startswith("mlp.experts.local_experts.") else None
    pattern = suffix.replace(expert.group(0), ".{e}.", 1) if expert else suffix
    hf = per_layer.get(pattern)
    if hf is None:
        return None
    names = tuple(prefix + h.format(e=expert.group(1) if expert else "") for h in hf)
    make: Callable[..., Rule] = concat if len(names) > 1 else copy
    return make(name, *names)
