"""Types of the architecture keys in ``configs/models/megatron/language_model.yaml``.

A key's type is its default's type; keys defaulting to ``null`` (and ``moe_layer_freq``, whose
default ``1`` is narrower than what it accepts) declare theirs here, as ``|``-joined type names.
Pure data, beside the trainer options' types (:mod:`.trainer_types`): the schema reads both.
"""

from __future__ import annotations

NULLABLE: dict[str, str] = {
    # sizes; null means "derive as Megatron-LM does" (kv_channels = hidden/heads, ...)
    "num_layers": "int",
    "hidden_size": "int",
    "ffn_hidden_size": "int",
    "num_attention_heads": "int",
    "kv_channels": "int",
    "max_position_embeddings": "int",
    "rotary_seq_len_interpolation_factor": "float",
    # vocabulary: null vocab_size means "the tokenizer's"
    "vocab_size": "int",
    "tokenizer_type": "str",
    "tokenizer_model": "str",
    # MoE; moe_layer_freq is an int (every N-th layer), a 0/1 list per layer, or Megatron-LM's
    # expression text such as "[0]*3+[1]*58" (null is refused by the mapping)
    "num_experts": "int",
    "moe_ffn_hidden_size": "int",
    "moe_shared_expert_intermediate_size": "int",
    "moe_layer_freq": "int|list|str",
    "moe_z_loss_coeff": "float",
    "moe_router_topk_scaling_factor": "float",
    "moe_router_num_groups": "int",
    "moe_router_group_topk": "int",
    "moe_router_dtype": "str",
    # multi-latent attention: no q LoRA when null (DeepSeek-V2-Lite); rope_type null lets
    # megatron.core pick (yarn for MLA)
    "q_lora_rank": "int",
    "rope_type": "str",
    # multi-token prediction (DeepSeek-V3): off when null
    "mtp_num_layers": "int",
}

CHOICES: dict[str, tuple[str, ...]] = {
    "normalization": ("LayerNorm", "RMSNorm"),
    "position_embedding_type": ("learned_absolute", "rope", "none"),
    "rope_type": ("rope", "yarn"),
    "moe_router_load_balancing_type": ("aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"),
    "moe_router_score_function": ("softmax", "sigmoid"),
    "moe_router_dtype": ("fp32", "fp64"),
    "moe_token_dispatcher_type": ("allgather", "alltoall", "flex"),
}
