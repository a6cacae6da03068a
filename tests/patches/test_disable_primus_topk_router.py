"""disable_primus_topk_router: one switch turns every Primus router feature off (spec D1).

Primus's router features are edits of upstream's TopKRouter gated by their own flags, so the
router class is always upstream's; with this flag on, the routing is upstream's even when a
Primus feature is configured, and the features' modules are never imported.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.patches.conftest import json_arg, run_probe

pytestmark = pytest.mark.slow

SHAPES = [[16, 3], [7, 5]]
EVEN = {"moe_router_force_load_balancing": True, "moe_router_force_load_balancing_type": "even"}
FUSED = {"moe_use_fused_router_with_aux_score": True}
EVEN_MODULE, FUSED_MODULE = "megatron.core._primus.moe_even_routing", "megatron.core._primus.fused_router"


def routing(tree: Path, tmp_path: Path, name: str, config: dict) -> dict:
    """The router's whole forward (upstream's force balancing happens there): a cpu-test tree."""
    out = tmp_path / f"{name}.pt"
    run_probe(tree, "router_probe.py", str(out), json_arg({"config": config, "shapes": SHAPES, "forward": True}))
    return torch.load(out)


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if key not in ("type", "router_modules"):
            assert torch.equal(got[key], want[key]), key


def test_disabled_router_is_upstream_even_with_even_balancing(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """Disabled: "even" and the fused router configured, yet the router forward is upstream's
    force balancing (random logits) bit for bit, and neither feature's module is imported.
    Enabled, the same configuration routes evenly, through both modules."""
    upstream = routing(cpu_trees["upstream"], tmp_path, "upstream", {"moe_router_force_load_balancing": True})
    disabled = routing(cpu_trees["patched"], tmp_path, "disabled", {**EVEN, **FUSED, "disable_primus_topk_router": True})
    enabled = routing(cpu_trees["patched"], tmp_path, "enabled", {**EVEN, **FUSED})
    assert_same(disabled, upstream)
    assert disabled["router_modules"] == []
    assert enabled["router_modules"] == sorted([EVEN_MODULE, FUSED_MODULE])
    topk, experts = 2, 8
    for step, (seq, bsz) in enumerate(SHAPES):
        assert not torch.equal(enabled[f"map{step}"], upstream[f"map{step}"])
        for t in range(seq * bsz):
            assert enabled[f"map{step}"][t].nonzero().flatten().tolist() == sorted(
                (t * topk + k) % experts for k in range(topk))


def test_disabled_router_is_upstream_with_force_balancing_off(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """Without force balancing, disabling still leaves the learned routing exactly upstream's, with
    the fused router configured and not run."""
    upstream = routing(cpu_trees["upstream"], tmp_path, "upstream-plain", {})
    disabled = routing(cpu_trees["patched"], tmp_path, "disabled-plain", {**FUSED, "disable_primus_topk_router": True})
    assert_same(disabled, upstream)
    assert disabled["router_modules"] == []
