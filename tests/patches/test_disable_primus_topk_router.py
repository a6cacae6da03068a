"""disable_primus_topk_router: one switch turns every Primus router feature off (spec D1).

Primus's router features are edits of upstream's TopKRouter gated by their own flags, so the
router class is always upstream's; with this flag on, the routing is upstream's even when a
Primus feature is configured.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.patches.conftest import json_arg, run_probe

pytestmark = pytest.mark.slow

SHAPES = [[16, 3], [7, 5]]


def routing(tree: Path, tmp_path: Path, name: str, config: dict) -> dict:
    out = tmp_path / f"{name}.pt"
    run_probe(tree, "router_probe.py", str(out), json_arg({"config": config, "shapes": SHAPES}))
    return torch.load(out)


def test_disabled_router_is_upstream_even_with_even_balancing(trees: dict[str, Path], tmp_path: Path) -> None:
    even = {"moe_router_force_load_balancing": True, "moe_router_force_load_balancing_type": "even"}
    upstream = routing(trees["upstream"], tmp_path, "upstream", {"moe_router_force_load_balancing": True})
    disabled = routing(trees["patched"], tmp_path, "disabled", {**even, "disable_primus_topk_router": True})
    enabled = routing(trees["patched"], tmp_path, "enabled", even)
    assert disabled["type"] == upstream["type"] == "megatron.core.transformer.moe.router.TopKRouter"
    for key in upstream:
        if key != "type":
            assert torch.equal(disabled[key], upstream[key]), key
    assert not torch.equal(enabled["map0"], upstream["map0"])  # the even mode really was on
