"""Build megatron.core's ``GPTModel`` from flat params and the mapped ``TransformerConfig``.

What Megatron-LM's ``pretrain_gpt.model_provider`` does, without its argument parser: pick the
TransformerEngine layer spec where TE is installed and the local (pure PyTorch) one elsewhere,
the decoder block spec for MoE models (dense and expert layers per ``moe_layer_freq``), pad the
vocabulary, tie or untie the output layer, and hand over the position-embedding options.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from primus_runtime.model.errors import ModelConfigError

if TYPE_CHECKING:
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
    from megatron.core.transformer.transformer_config import TransformerConfig

log = logging.getLogger(__name__)


def have_transformer_engine() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def padded_vocab_size(vocab_size: int | None, divisible_by: int, tensor_parallel: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``divisible_by * tensor_parallel``, as Megatron-LM pads it."""
    if vocab_size is None:
        raise ModelConfigError("vocab_size is null: set it to the tokenizer's vocabulary size")
    multiple = divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


def layer_spec(params: Mapping[str, Any], config: TransformerConfig, use_te: bool | None = None, *,
               vp_stage: int | None = None) -> tuple[ModuleSpec | TransformerBlockSubmodules, str]:
    """The decoder's layer (or, for MoE, block) spec, and a line saying which one, for the log.

    ``use_te`` None picks TransformerEngine when it is importable. With ``enable_primus_turbo`` and
    ``use_turbo_attention`` the wheel itself swaps the core attention (any model, MLA included);
    otherwise, without TE, multi-latent attention gets
    :class:`~primus_runtime.model.local_attention.SDPACoreAttention` (the local spec's own core
    attention cannot build it; an upstream wheel has no Turbo attention to use instead).
    Grouped-GEMM experts without TE need the grouped_gemm package, unless ``use_turbo_grouped_mlp``
    (with ``enable_primus_turbo``) has the wheel build them. The line names the attention, the
    Turbo experts and the fused paths in use.
    """
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_decoder_block_spec,
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    use_te = _resolve_use_te(use_te)
    turbo = getattr(config, "enable_primus_turbo", False)
    turbo_experts = turbo and getattr(config, "use_turbo_grouped_mlp", False)
    if (config.num_moe_experts and config.moe_grouped_gemm and not use_te and not turbo_experts
            and importlib.util.find_spec("grouped_gemm") is None):
        raise ModelConfigError("moe_grouped_gemm needs TransformerEngine or the grouped_gemm package; "
                               "set moe_grouped_gemm: false to run the experts one after another")
    normalization = params.get("normalization", "LayerNorm")
    spec: ModuleSpec | TransformerBlockSubmodules
    if config.num_moe_experts:
        spec = get_gpt_decoder_block_spec(config, use_transformer_engine=use_te, normalization=normalization,
                                          vp_stage=vp_stage)
    elif use_te:
        spec = get_gpt_layer_with_transformer_engine_spec(
            qk_layernorm=config.qk_layernorm, multi_latent_attention=config.multi_latent_attention)
    else:
        spec = get_gpt_layer_local_spec(
            qk_layernorm=config.qk_layernorm, multi_latent_attention=config.multi_latent_attention,
            normalization=normalization)
    what = "TransformerEngine layer spec" if use_te else "local layer spec (PyTorch modules)"
    turbo_attention = turbo and getattr(config, "use_turbo_attention", False)
    if turbo_attention or (turbo_experts and config.num_moe_experts):
        from megatron.core._primus.turbo.backend import backend

        parts = [name for name, on in (("core attention", turbo_attention), ("grouped-GEMM experts", turbo_experts))
                 if on]
        what += f", {' and '.join(parts)} on the Primus Turbo backend ({backend()})"
    if config.multi_latent_attention and not use_te and not turbo_attention:
        _use_sdpa_core_attention(spec)
        what += ", MLA core attention by torch SDPA"
    if config.cross_entropy_loss_fusion:
        what += f", fused cross-entropy ({config.cross_entropy_fusion_impl})"
    return spec, what


def _resolve_use_te(use_te: bool | None) -> bool:
    if use_te is None:
        return have_transformer_engine()
    if use_te and not have_transformer_engine():
        raise ModelConfigError("the TransformerEngine layer spec was asked for, but transformer_engine is not installed")
    return use_te


def _use_sdpa_core_attention(spec: ModuleSpec | TransformerBlockSubmodules) -> None:
    from primus_runtime.model.local_attention import SDPACoreAttention

    layers = getattr(spec, "layer_specs", None) or [spec]
    for layer in layers:  # freshly made by the spec functions above, so changing them is safe
        layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention


def build_gpt_model(params: Mapping[str, Any], config: TransformerConfig, *, pre_process: bool = True,
                    post_process: bool = True, vp_stage: int | None = None, use_te: bool | None = None) -> GPTModel:
    """The GPT model (this rank's pipeline stage) for ``params``, built with ``config``."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

    use_te = _resolve_use_te(use_te)
    spec, what = layer_spec(params, config, use_te, vp_stage=vp_stage)
    log.info("model: %s", what)
    if config.multi_latent_attention and not have_transformer_engine():
        _correct_mla_te_probe()
    max_positions = params.get("max_position_embeddings")
    if max_positions is None:
        raise ModelConfigError("max_position_embeddings is null: set the longest sequence the model takes")
    mtp_spec = (get_gpt_mtp_block_spec(config, spec, use_transformer_engine=use_te, vp_stage=vp_stage)
                if config.mtp_num_layers else None)
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(params.get("vocab_size"), int(params.get("make_vocab_size_divisible_by", 128)),
                                     config.tensor_model_parallel_size),
        max_sequence_length=max_positions,
        pre_process=pre_process,
        post_process=post_process,
        fp16_lm_cross_entropy=bool(params.get("fp16_lm_cross_entropy", False)),
        share_embeddings_and_output_weights=not params.get("untie_embeddings_and_output_weights", False),
        position_embedding_type=params.get("position_embedding_type", "learned_absolute"),
        rotary_percent=float(params.get("rotary_percent", 1.0)),
        rotary_base=params.get("rotary_base", 10000),
        rope_scaling=bool(params.get("use_rope_scaling", False)),
        rope_scaling_factor=float(params.get("rope_scaling_factor", 8.0)),
        seq_len_interpolation_factor=params.get("rotary_seq_len_interpolation_factor"),
        mtp_block_spec=mtp_spec,
        vp_stage=vp_stage,
    )


def _correct_mla_te_probe() -> None:
    """Set ``multi_latent_attention.HAVE_TE`` to False on a host without TransformerEngine.

    megatron.core 0.16.1 sets it from whether its TE *extension module* imports, which it does
    without TE (its classes are then built on mocks), and MLA's constructor then calls
    ``isinstance`` with such a class and fails. False is the value the module means to have.
    """
    import megatron.core.transformer.multi_latent_attention as mla

    mla.HAVE_TE = False
