"""Map a flat Primus/Megatron-LM parameter dict onto megatron.core's ``TransformerConfig``.

Keys named like a config field pass through unchanged, as Megatron-LM's
``core_transformer_config_from_args`` does; the few Megatron-LM arguments that differ from the
field they feed (``norm_epsilon``, ``swiglu``, ``num_experts``, ``bf16``, ...) are translated
here. Primus flag fields exist only in patched wheels: a key is passed only where the installed
class has the field, so one config serves an upstream wheel and a patched one (whether a flag
set away from its default is allowed is :mod:`primus_runtime.flags`'s check, made earlier).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from primus_runtime.model import pipeline_split
from primus_runtime.model.errors import ModelConfigError

if TYPE_CHECKING:
    from megatron.core.transformer.transformer_config import TransformerConfig

#: params keys this module translates itself; never passed through by name
_TRANSLATED = frozenset({
    "norm_epsilon", "apply_layernorm_1p", "swiglu", "num_experts", "group_query_attention", "num_query_groups",
    "moe_layer_freq", "bf16", "fp16", "num_layers_per_virtual_pipeline_stage", "rope_type", "ffn_hidden_size",
    "bias_swiglu_fusion", "bias_gelu_fusion", pipeline_split.FLAG,
})
_REQUIRED = ("num_layers", "hidden_size", "num_attention_heads")
_FREQ_TERM = re.compile(r"\[\s*([01](?:\s*,\s*[01])*)\s*\](?:\s*\*\s*(\d+))?")


def transformer_config(params: Mapping[str, Any], *, fields_available: set[str] | None = None,
                       **parallel: Any) -> TransformerConfig:
    """The ``TransformerConfig`` (``MLATransformerConfig`` with ``multi_latent_attention``) for ``params``.

    ``parallel`` overrides params keys (``tensor_model_parallel_size=1``, ``bf16=True``) or sets
    config fields directly (``use_cpu_initialization=True``). ``fields_available`` narrows the
    fields that keys may pass through to (default: every field of the installed class).
    """
    given = set(params)
    params = {**params, **parallel}
    kwargs = _translated(params)  # checks the params before megatron is imported
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    cls = MLATransformerConfig if params.get("multi_latent_attention") else TransformerConfig
    installed = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(parallel) - given - installed - _TRANSLATED)
    if unknown:
        raise ModelConfigError(f"{unknown[0]} is neither a config key nor a {cls.__name__} field")
    available = installed if fields_available is None else installed & set(fields_available)
    kwargs.update((k, v) for k, v in params.items() if k in available and k not in _TRANSLATED)
    if params.get("rope_type") is not None and "rope_type" in installed:
        kwargs["rope_type"] = params["rope_type"]
    if params.get(pipeline_split.FLAG) is not None:
        kwargs.update(_manual_split(params, installed))
    if kwargs.get("virtual_pipeline_model_parallel_size") and "batch_p2p_comm" not in params:
        # the interleaved schedule sends activations forward and gradients backward in one call; with
        # two pipeline ranks both go to the same peer, and batched isend/irecv (megatron-core's
        # default) pairs them by posting order, which on gloo swaps activations and gradients (the
        # losses drift from the second group of microbatches on). The unbatched path sends one
        # direction over a second communicator. Numerics are unchanged: only the transport differs.
        kwargs["batch_p2p_comm"] = False
    try:
        return cls(**kwargs)
    except (ValueError, AssertionError, TypeError, NotImplementedError) as exc:
        raise ModelConfigError(f"megatron.core rejects the model config: {exc}") from exc


def _translated(params: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields computed from Megatron-LM arguments whose name or meaning differs."""
    import torch
    import torch.nn.functional as F

    for key in _REQUIRED:
        if not isinstance(params.get(key), int) or params[key] <= 0:
            raise ModelConfigError(f"{key} must be a positive integer, got {params.get(key)!r}")
    kwargs: dict[str, Any] = {}
    bf16, fp16 = bool(params.get("bf16", False)), bool(params.get("fp16", False))
    if bf16 and fp16:
        raise ModelConfigError("bf16 and fp16 are both true; choose one")
    dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    kwargs.update(bf16=bf16, fp16=fp16, params_dtype=dtype, pipeline_dtype=dtype, deallocate_pipeline_outputs=True)

    kwargs["layernorm_epsilon"] = float(params.get("norm_epsilon", 1e-5))
    kwargs["layernorm_zero_centered_gamma"] = bool(params.get("apply_layernorm_1p", False))
    kwargs["ffn_hidden_size"] = ffn_hidden_size(params)
    if params.get("swiglu"):
        kwargs.update(gated_linear_unit=True, activation_func=F.silu,
                      bias_activation_fusion=bool(params.get("bias_swiglu_fusion", True)))
    else:  # GeLU; Megatron-LM fuses its bias only where there is one
        kwargs["bias_activation_fusion"] = bool(params.get("bias_gelu_fusion", True)) and bool(
            params.get("add_bias_linear", True))
    kwargs["num_query_groups"] = params.get("num_query_groups") if params.get("group_query_attention") else None

    num_experts = params.get("num_experts")
    kwargs["num_moe_experts"] = num_experts
    if num_experts is not None:
        kwargs["moe_layer_freq"] = moe_layer_pattern(params.get("moe_layer_freq", 1), params["num_layers"])
    kwargs["virtual_pipeline_model_parallel_size"] = _virtual_pipeline_size(params)
    return kwargs


def moe_layer_pattern(freq: Any, num_layers: int) -> int | list[int]:
    """``moe_layer_freq`` as megatron.core takes it: an int N, or one 0/1 per layer.

    Accepts Megatron-LM's command-line forms as text too: ``"2"``, ``"[0,1,1]"`` and sums of
    repeated lists such as ``"[0]*3+[1]*58"`` (parsed, never evaluated).
    """
    if isinstance(freq, str):
        freq = _parse_freq_text(freq)
    if isinstance(freq, bool) or freq is None:
        raise ModelConfigError(f"moe_layer_freq must be an int or a list of 0/1 per layer, got {freq!r}")
    if isinstance(freq, int):
        if freq < 1:
            raise ModelConfigError(f"moe_layer_freq must be at least 1, got {freq}")
        return freq
    if not isinstance(freq, list) or any(v not in (0, 1) or isinstance(v, bool) for v in freq):
        raise ModelConfigError(f"moe_layer_freq must be an int or a list of 0/1 per layer, got {freq!r}")
    if len(freq) != num_layers:
        raise ModelConfigError(f"moe_layer_freq lists {len(freq)} layers but num_layers is {num_layers}")
    return list(freq)


def _parse_freq_text(text: str) -> int | list[int]:
    body = text.strip()
    while body.startswith("(") and body.endswith(")"):
        body = body[1:-1].strip()
    if body.isdigit():
        return int(body)
    pattern: list[int] = []
    for term in body.split("+"):
        match = _FREQ_TERM.fullmatch(term.strip())
        if match is None:
            raise ModelConfigError(
                f"moe_layer_freq {text!r}: expected an int, a list like [0,1,1], or a sum like [0]*3+[1]*58")
        values = [int(v) for v in match.group(1).split(",")]
        pattern += values * int(match.group(2) or 1)
    return pattern


def ffn_hidden_size(params: Mapping[str, Any]) -> int:
    """Megatron-LM's default where unset: 4h, or with SwiGLU 2/3 of that rounded down to 64."""
    ffn = params.get("ffn_hidden_size")
    if ffn is not None:
        return int(ffn)
    hidden = int(params["hidden_size"])
    return int(4 * hidden * 2 / 3 / 64) * 64 if params.get("swiglu") else 4 * hidden


def _manual_split(params: Mapping[str, Any], installed: set[str]) -> dict[str, Any]:
    """``decoder_pipeline_manual_split_list`` as the installed megatron-core takes it: upstream's own
    ``pipeline_model_parallel_layout`` where it has one (0.16.1), else the patched field."""
    split, pp = list(params[pipeline_split.FLAG]), int(params.get("pipeline_model_parallel_size", 1))
    try:
        vp = pipeline_split.virtual_size(split, int(params["num_layers"]), pp, params)
    except pipeline_split.SplitError as exc:
        raise ModelConfigError(str(exc)) from None
    kwargs: dict[str, Any] = {"virtual_pipeline_model_parallel_size": vp if vp > 1 else None}
    if "pipeline_model_parallel_layout" in installed:
        kwargs["pipeline_model_parallel_layout"] = pipeline_split.layout(split, pp)
    elif pipeline_split.FLAG in installed:
        kwargs[pipeline_split.FLAG] = split
    else:
        raise ModelConfigError(f"{pipeline_split.FLAG} needs megatron-core's pipeline_model_parallel_layout "
                               f"(0.13.1 and newer) or a primus-rewriter build with the {pipeline_split.FLAG} patch")
    return kwargs


def _virtual_pipeline_size(params: Mapping[str, Any]) -> int | None:
    per_virtual = params.get("num_layers_per_virtual_pipeline_stage")
    if per_virtual is None:
        return None
    pp = int(params.get("pipeline_model_parallel_size", 1))
    layers = int(params["num_layers"])
    if pp < 2:
        raise ModelConfigError("num_layers_per_virtual_pipeline_stage needs pipeline_model_parallel_size > 1")
    if layers % pp or (layers // pp) % per_virtual:
        raise ModelConfigError(
            f"num_layers_per_virtual_pipeline_stage={per_virtual} must divide the {layers // pp} layers of each of "
            f"the {pp} pipeline stages (num_layers={layers})")
    return layers // pp // per_virtual
