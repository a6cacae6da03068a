"""What ``use_turbo_deepep`` and ``turbo_sync_free_moe_stage`` do to a ``TransformerConfig``, and which
flex backend and stream arguments the dispatcher gets (one process, no process group).

The ``deep_ep`` branches are dispatch tests: ``fused_a2a``'s entry points are replaced by stand-ins
(any callable: they are never called here) so the backend probe sees DeepEP or HybridEP
"installed"; no DeepEP kernel runs. The stream arguments are read off a recording manager that
``MoEFlexTokenDispatcher.token_dispatch`` / ``token_combine`` call.

usage: python deepep_config_probe.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Any

import torch

MOE = dict(num_layers=1, hidden_size=32, num_attention_heads=4, num_moe_experts=8, moe_router_topk=2,
           use_cpu_initialization=True, moe_token_dispatcher_type="alltoall", add_bias_linear=False)
TURBO = {"enable_primus_turbo": True}
FIELDS = ("moe_use_fused_router_with_aux_score", "moe_permute_fusion", "use_turbo_deepep", "use_turbo_grouped_mlp",
          "moe_token_dispatcher_type", "moe_flex_dispatcher_backend", "moe_deepep_num_sms", "moe_hybridep_num_sms")


def config(**options: Any) -> Any:
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(**{**MOE, **options})


def fields(**options: Any) -> dict:
    made = config(**options)
    return {name: getattr(made, name) for name in FIELDS}


def refusal(**options: Any) -> str | None:
    try:
        config(**options)
    except (ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def resolve_refusal(**changes: Any) -> str | None:
    """What ``resolve`` says of a use_turbo_deepep config with ``changes`` (for options whose
    upstream checks need TransformerEngine, e.g. FP8: the config's fields, changed, on a namespace)."""
    from megatron.core._primus.turbo.deepep import resolve

    try:
        resolve(types.SimpleNamespace(**{**vars(config(**TURBO, use_turbo_deepep=True)), **changes}))
    except ValueError as err:
        return f"ValueError: {err}"
    return None


def with_backend(deepep: bool, hybridep: bool, **options: Any) -> dict:
    """The config's fields, and the backend its flex dispatcher gets, with fused_a2a's DeepEP /
    HybridEP entry points stood in for."""
    from megatron.core._primus.turbo import deepep as turbo_deepep
    from megatron.core.transformer.moe import fused_a2a

    saved = fused_a2a.fused_dispatch, fused_a2a.hybrid_ep_dispatch
    fused_a2a.fused_dispatch = (lambda *a, **k: None) if deepep else None
    fused_a2a.hybrid_ep_dispatch = (lambda *a, **k: None) if hybridep else None
    turbo_deepep.dispatch_backend.cache_clear()
    try:
        return {"backend": turbo_deepep.backend_for(config(**options)), **fields(**options)}
    finally:
        fused_a2a.fused_dispatch, fused_a2a.hybrid_ep_dispatch = saved
        turbo_deepep.dispatch_backend.cache_clear()


class RecordingManager:
    """Records the stream arguments the flex dispatcher passes on."""

    dispatched_probs = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bool]] = []

    def dispatch(self, hidden: torch.Tensor, async_finish: bool, allocate_on_comm_stream: bool) -> torch.Tensor:
        self.calls.append(("dispatch", async_finish, allocate_on_comm_stream))
        return hidden

    def combine(self, hidden: torch.Tensor, async_finish: bool, allocate_on_comm_stream: bool) -> torch.Tensor:
        self.calls.append(("combine", async_finish, allocate_on_comm_stream))
        return hidden


def stream_arguments(**options: Any) -> list:
    from megatron.core.transformer.moe.token_dispatcher import MoEFlexTokenDispatcher

    dispatcher = types.SimpleNamespace(config=config(**options), _comm_manager=RecordingManager())
    hidden = torch.zeros(2, 4)
    MoEFlexTokenDispatcher.token_dispatch(dispatcher, hidden)
    MoEFlexTokenDispatcher.token_combine(dispatcher, hidden)
    return dispatcher._comm_manager.calls


def main(out: str) -> None:
    from megatron.core._primus.turbo.sync_free import fields_for

    stage2 = {**TURBO, "turbo_sync_free_moe_stage": 2}

    results = {
        "stages": {stage: fields(**TURBO, turbo_sync_free_moe_stage=stage) for stage in range(4)},
        "stage_table": {stage: list(fields_for(stage)) for stage in range(4)},
        "stage_without_turbo": fields(turbo_sync_free_moe_stage=2),
        "deepep_without_turbo": fields(use_turbo_deepep=True),
        "portable": fields(**TURBO, use_turbo_deepep=True),
        "dense": fields(**{**TURBO, "use_turbo_deepep": True, "num_moe_experts": None}),
        "refused": {
            "stage 4": refusal(**TURBO, turbo_sync_free_moe_stage=4),
            "num_cu 0": refusal(**TURBO, use_turbo_deepep=True, turbo_deepep_num_cu=0),
            "shared expert overlap": refusal(**TURBO, use_turbo_deepep=True, moe_shared_expert_intermediate_size=64,
                                             moe_shared_expert_overlap=True),
            "quantization padding": resolve_refusal(fp8="hybrid", moe_router_padding_for_quantization=True),
            "pad to capacity": refusal(**TURBO, use_turbo_deepep=True, moe_expert_capacity_factor=1.0,
                                       moe_pad_expert_input_to_capacity=True),
        },
        "deepep": with_backend(True, True, **TURBO, use_turbo_deepep=True, turbo_deepep_num_cu=48),
        "deepep_stage2": with_backend(True, True, **stage2),
        "hybridep": with_backend(False, True, **TURBO, use_turbo_deepep=True, turbo_deepep_num_cu=24),
        "streams": {str(flag): stream_arguments(**TURBO, use_turbo_deepep=True, turbo_deepep_use_comm_stream=flag)
                    for flag in (False, True)},
        "streams_upstream": stream_arguments(),
    }
    os.environ["PRIMUS_TURBO_BACKEND"] = "torch"
    results["forced_torch"] = with_backend(True, True, **TURBO, use_turbo_deepep=True)
    with open(out, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main(sys.argv[1])
