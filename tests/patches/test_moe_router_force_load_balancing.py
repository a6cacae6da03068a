"""moe_router_force_load_balancing (+ _type): the "even" mode, and flag off = upstream.

Spec D2 (shared/reference/flags-spec.md): with "even", token t's k-th slot goes to expert
(t*topk + k) mod E, so each expert gets floor(N*k/E) or ceil(N*k/E) tokens and each token k
distinct experts; the token keeps its own top-k probability values, largest first.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.patches.conftest import json_arg, run_probe
from tests.procs import fork_server

pytestmark = pytest.mark.slow

EVEN = {"moe_router_force_load_balancing": True, "moe_router_force_load_balancing_type": "even"}


def routing_outputs(tree: Path, tmp_path: Path, name: str, config: dict, shapes: list, forward: bool = False) -> dict:
    """The router probe's outputs: ``routing()`` on logits, or with ``forward`` the whole
    ``forward()`` on hidden states (a cpu-test tree)."""
    out = tmp_path / f"{name}.pt"
    run_probe(tree, "router_probe.py", str(out), json_arg({"config": config, "shapes": shapes, "forward": forward}))
    return torch.load(out)


def test_flag_off_routing_is_upstream_bit_for_bit(trees: dict[str, Path], tmp_path: Path) -> None:
    """Default flags: probs, routing map and logits gradients equal upstream's exactly."""
    shapes = [[16, 3], [7, 5], [33, 2]]
    up = routing_outputs(trees["upstream"], tmp_path, "up", {}, shapes)
    patched = routing_outputs(trees["patched"], tmp_path, "patched", {}, shapes)
    assert patched["type"] == up["type"] == "megatron.core.transformer.moe.router.TopKRouter"
    assert patched["router_modules"] == up["router_modules"] == []
    for key in up:
        if key not in ("type", "router_modules"):
            assert torch.equal(up[key], patched[key]), key


def test_uniform_mode_is_upstream_bit_for_bit(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """Force balancing on with the "uniform" type: upstream's mode, untouched. Upstream applies it
    in ``TopKRouter.forward`` (random logits before ``routing()``), so the router runs its whole
    forward here; the random logits really replace the learned ones (the routing differs from
    force balancing off), and "uniform" never imports the even-routing module."""
    shapes = [[16, 3], [7, 5]]
    on = {"moe_router_force_load_balancing": True}
    up = routing_outputs(cpu_trees["upstream"], tmp_path, "up", on, shapes, forward=True)
    patched = routing_outputs(cpu_trees["patched"], tmp_path, "patched",
                              {**on, "moe_router_force_load_balancing_type": "uniform"}, shapes, forward=True)
    learned = routing_outputs(cpu_trees["upstream"], tmp_path, "learned", {}, shapes, forward=True)
    assert up.keys() == patched.keys()
    for key in up:
        if key not in ("type", "router_modules"):
            assert torch.equal(up[key], patched[key]), key
    assert patched["router_modules"] == []
    for step in range(len(shapes)):
        assert not torch.equal(up[f"map{step}"], learned[f"map{step}"]), step


def test_even_mode_through_a_real_moe_layer(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """A real ``MoELayer`` forward (local spec, SequentialMLP experts, EP=1) with "even": every
    expert receives exactly its count of the slots (t*topk + k) mod E, for the alltoall and the
    allgather dispatcher and a token count that does not divide evenly; with force balancing off
    the same layer's load is uneven, so the counts are the mode's doing."""
    shapes = [[16, 3], [7, 5]]
    experts, topk = 8, 2
    want = []
    for seq, bsz in shapes:
        slots = seq * bsz * topk
        want.append([slots // experts + (1 if e < slots % experts else 0) for e in range(experts)])
    for dispatcher in ("alltoall", "allgather"):
        config = {**EVEN, "moe_token_dispatcher_type": dispatcher}
        out = tmp_path / f"layer-{dispatcher}.json"
        run_probe(cpu_trees["patched"], "moe_layer_probe.py", str(out), json_arg({"config": config, "shapes": shapes}))
        got = json.loads(out.read_text())
        assert got["layer"] == "MoELayer"
        assert got["tokens_per_expert"] == want, dispatcher
        assert got["output_shapes"] == [[seq, bsz, 32] for seq, bsz in shapes]
    out = tmp_path / "layer-off.json"
    run_probe(cpu_trees["patched"], "moe_layer_probe.py", str(out), json_arg({"shapes": shapes}))
    off = json.loads(out.read_text())["tokens_per_expert"]
    assert sum(off[0]) == sum(want[0]) and off[0] != want[0]


def test_even_mode_balances_exactly(trees: dict[str, Path], tmp_path: Path) -> None:
    """Every expert gets floor or ceil of N*k/E tokens, every token k distinct experts, the
    token's own top-k values (largest first) on its experts, the same loads at every step."""
    shapes = [[16, 3], [7, 5], [16, 3]]
    up = routing_outputs(trees["upstream"], tmp_path, "up", {}, shapes)
    even = routing_outputs(trees["patched"], tmp_path, "even", EVEN, shapes)
    experts, topk = 8, 2
    for step, (seq, bsz) in enumerate(shapes):
        routing_map, probs = even[f"map{step}"], even[f"probs{step}"]
        n = seq * bsz
        counts = routing_map.sum(dim=0)
        assert set(counts.tolist()) <= {n * topk // experts, -(-n * topk // experts)}
        assert int(counts.sum()) == n * topk
        assert torch.equal(routing_map.sum(dim=1), torch.full((n,), topk))
        for t in range(n):
            chosen = routing_map[t].nonzero().flatten().tolist()
            assert chosen == sorted((t * topk + k) % experts for k in range(topk))
            want = torch.topk(up[f"probs{step}"][t], topk).values
            got = torch.stack([probs[t, (t * topk + k) % experts] for k in range(topk)])
            assert torch.equal(got, want)
        assert torch.isfinite(even[f"grad{step}"]).all() and even[f"grad{step}"].abs().sum() > 0
    assert torch.equal(even["map0"], even["map2"])  # step-invariant loads


def test_unknown_mode_is_rejected_by_the_config(trees: dict[str, Path]) -> None:
    """A bad value fails in TransformerConfig.__post_init__, naming the field."""
    code = (
        "from megatron.core.transformer.transformer_config import TransformerConfig\n"
        "TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, "
        "moe_router_force_load_balancing_type='round_robin')\n"
    )
    proc = fork_server(trees["patched"]).run("-c", code, check=False)
    assert proc.returncode != 0
    assert "moe_router_force_load_balancing_type must be one of uniform, even" in proc.stderr


def _even_module(tree: Path):
    path = tree / "megatron/core/_primus/moe_even_routing.py"
    spec = importlib.util.spec_from_file_location("moe_even_routing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("tokens", "topk", "experts", "loads"), [
    (4096, 8, 64, {512}),
    (100, 6, 64, {9, 10}),
    (5, 4, 4, {5}),
    (3, 1, 8, {0, 1}),
])
def test_even_counts_match_the_spec(trees: dict[str, Path], tokens: int, topk: int, experts: int, loads: set) -> None:
    """The spec's worked examples: N=4096,k=8,E=64 gives 512 each; N=100,k=6,E=64 gives 9 or 10."""
    module = _even_module(trees["patched"])
    probs = torch.rand(tokens, experts).softmax(dim=1)
    routing_map = torch.zeros(tokens, experts, dtype=torch.bool)
    new_probs, new_map = module.force_even_routing(probs, routing_map, topk)
    assert set(new_map.sum(dim=0).tolist()) == loads
    assert torch.equal(new_map.sum(dim=1), torch.full((tokens,), topk))
    assert torch.equal((new_probs > 0), new_map)


def test_even_needs_topk_at_most_experts(trees: dict[str, Path]) -> None:
    module = _even_module(trees["patched"])
    with pytest.raises(ValueError, match="topk <= num_experts"):
        module.force_even_routing(torch.rand(4, 2), torch.zeros(4, 2, dtype=torch.bool), 3)
