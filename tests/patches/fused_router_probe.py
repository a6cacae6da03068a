"""Run ``TopKRouter.routing`` of whatever megatron.core is on ``sys.path``; save what the fused
router test compares.

Like ``router_probe.py`` (same router settings by default), plus what comparing a fused router
with upstream's needs: a random weighting of the probs for the backward pass (``probs.sum()`` has
almost no gradient under softmax, whose top-k probs sum to one), the aux losses as the tracker
records them, optional padding masks, expert bias, bf16 logits, the log records of the fused
router, and stand-ins for the Primus-Turbo and TransformerEngine entry points (so that their
wiring runs on a host that has neither).

usage: python fused_router_probe.py OUT.pt JSON_OPTIONS

Per-process options: cases (a list of per-case options; default: the options are one case),
stand_in ("primus_turbo"|"transformer_engine"), log (bool). Per-case options: config
(TransformerConfig overrides), shapes ([[seq, bsz], ...]), padding (bool: a random padding mask,
True = padding), expert_bias (bool: a random bias), dtype ("float32"|"bfloat16"), eval (bool:
router.eval() under no_grad).
"""

from __future__ import annotations

import json
import logging
import sys
import types

import torch
from probe_common import ROUTER_CONFIG, start_single_process


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name} {record.getMessage()}")


def install_stand_in(kind: str, calls: dict) -> None:
    """Stand-ins with the real entry points' signatures that record their calls and arguments and
    compute upstream's unfused results: they test the router's dispatch, not any kernel."""
    from megatron.core.transformer.moe import moe_utils

    topk_ref = moe_utils.topk_routing_with_score_function
    aux_ref = moe_utils.compute_routing_scores_for_aux_loss
    if kind == "primus_turbo":
        def fused_group_topk_routing_with_aux_score(logits, topk, groups, selected_groups, score_function,
                                                    scaling_factor):
            calls["primus_turbo"] = calls.get("primus_turbo", 0) + 1
            calls["args"] = [topk, groups, selected_groups, score_function, scaling_factor]
            probs, routing_map = topk_ref(logits, topk, num_groups=groups, group_topk=selected_groups,
                                          scaling_factor=scaling_factor, score_function=score_function)
            _, scores = aux_ref(logits, topk, score_function)
            return scores, probs, routing_map.int()  # the real kernel's map is not bool either

        names = ["primus_turbo", "primus_turbo.pytorch", "primus_turbo.pytorch.ops"]
        modules = [types.ModuleType(n) for n in names]
        modules[2].fused_group_topk_routing_with_aux_score = fused_group_topk_routing_with_aux_score
        modules[0].pytorch, modules[1].ops = modules[1], modules[2]
        sys.modules.update(zip(names, modules))
    elif kind == "transformer_engine":
        def fused_topk_with_score_function(logits, topk, use_pre_softmax, num_groups, group_topk, scaling_factor,
                                           score_function, expert_bias):
            calls["te_topk"] = calls.get("te_topk", 0) + 1
            calls.setdefault("te_topk_args", []).append(
                [topk, use_pre_softmax, num_groups, group_topk, scaling_factor, score_function, expert_bias is not None])
            return topk_ref(logits, topk, use_pre_softmax=use_pre_softmax, num_groups=num_groups,
                            group_topk=group_topk, scaling_factor=scaling_factor, score_function=score_function,
                            expert_bias=expert_bias)

        def fused_compute_score_for_moe_aux_loss(logits, topk, score_function):
            calls["te_aux"] = calls.get("te_aux", 0) + 1
            calls.setdefault("te_aux_args", []).append([topk, score_function])
            return aux_ref(logits, topk, score_function)

        moe_utils.HAVE_TE = True
        moe_utils.fused_topk_with_score_function = fused_topk_with_score_function
        moe_utils.fused_compute_score_for_moe_aux_loss = fused_compute_score_for_moe_aux_loss
    else:
        raise ValueError(kind)


def main(out: str, opts: dict) -> None:
    start_single_process()
    records = Records()
    if opts.get("log"):
        logger = logging.getLogger("megatron.core._primus.fused_router")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(records)
    calls: dict = {}
    if opts.get("stand_in"):
        install_stand_in(opts["stand_in"], calls)
    results = {"cases": [run_case(case) for case in opts.get("cases", [opts])]}
    results["log"] = records.lines
    results["calls"] = calls
    torch.save(results, out)
    torch.distributed.destroy_process_group()


def run_case(opts: dict) -> dict:
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.transformer_config import TransformerConfig

    settings = {**ROUTER_CONFIG, **opts.get("config", {})}
    config = TransformerConfig(**settings)
    get_moe_layer_wise_logging_tracker().clear()  # only this case's losses
    torch.manual_seed(1234)
    router = TopKRouter(config=config, pg_collection=ProcessGroupCollection.use_mpu_process_groups())
    router.set_layer_number(1)  # the aux-loss tracker records nothing for a router without one
    if opts.get("expert_bias"):
        bias = torch.randn(config.num_moe_experts, generator=torch.Generator().manual_seed(7)) * 0.1
        with torch.no_grad():
            router.expert_bias.copy_(bias)
    dtype = getattr(torch, opts.get("dtype", "float32"))
    evaluating = bool(opts.get("eval"))
    router.train(not evaluating)
    results: dict = {}
    for step, (seq, bsz) in enumerate(opts.get("shapes", [[16, 3], [7, 5], [64, 4]])):
        gen = torch.Generator().manual_seed(100 + step)
        logits = (torch.randn(seq, bsz, config.num_moe_experts, generator=gen) * 2).to(dtype).requires_grad_(True)
        weights = torch.rand(seq * bsz, config.num_moe_experts, generator=gen)
        padding = torch.rand(seq, bsz, generator=gen) < 0.25 if opts.get("padding") else None
        clear_aux_losses_tracker()
        if evaluating:
            with torch.no_grad():
                probs, routing_map = router.routing(logits, padding_mask=padding)
        else:
            probs, routing_map = router.routing(logits, padding_mask=padding)
            (probs.float() * weights).sum().backward()
            results[f"grad{step}"] = logits.grad.clone()
        results[f"probs{step}"] = probs.detach().clone()
        results[f"map{step}"] = routing_map.clone()
        if padding is not None:
            results[f"padding{step}"] = padding.reshape(-1)
        tracker = get_moe_layer_wise_logging_tracker()
        for name, entry in sorted(tracker.items()):
            results[f"aux:{name}{step}"] = entry["values"].detach().clone()
        if router.local_tokens_per_expert is not None:
            results[f"tokens_per_expert{step}"] = router.local_tokens_per_expert.clone()
        if router.global_tokens_per_expert is not None:
            results[f"global_tokens_per_expert{step}"] = router.global_tokens_per_expert.clone()
    return results


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
