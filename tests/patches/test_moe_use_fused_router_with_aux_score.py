"""moe_use_fused_router_with_aux_score: fused top-k routing + aux-loss scores, and flag off = upstream.

Spec D5 (shared/reference/flags-spec.md): for fixed logits (no expert bias; softmax and sigmoid;
with and without group-limited routing) fused and unfused routing give identical routing maps,
probs within 1e-6, identical aux-loss values and logits gradients within 1e-5.

"Unfused" is always upstream's own ``TopKRouter.routing`` from the unpatched tree; "fused" is the
patched tree with the flag on. On this host neither Primus-Turbo nor TransformerEngine is
installed, so the fused router takes its torch path, and that path is what the numerical
acceptance tests check. The Primus-Turbo and TransformerEngine branches are covered by *dispatch*
tests: stand-ins with the real entry points' signatures, which record their arguments and compute
with upstream's own unfused functions, show which backend the router picks, what it passes, and
that the router's remaining steps handle what comes back. They test no kernel (none is available
here). Expert bias and the global aux loss keep buffers on the CUDA device, so those cases run on
the session's cpu-test flavor trees (``cpu_trees``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.patches.conftest import json_arg, run_probe
from tests.patches.probe_common import ROUTER_CONFIG

pytestmark = pytest.mark.slow

FLAG = "moe_use_fused_router_with_aux_score"
SOFTMAX_GROUPS = {"num_moe_experts": 16, "moe_router_topk": 4, "moe_router_num_groups": 4, "moe_router_group_topk": 2}
SIGMOID = {"moe_router_score_function": "sigmoid"}
SIGMOID_GROUPS = {**SOFTMAX_GROUPS, **SIGMOID}

# the acceptance configurations (fp32 logits, no expert bias), then the rest of upstream's routing
ACCEPTANCE = {
    "softmax": {},
    "sigmoid": SIGMOID,
    "softmax-groups": SOFTMAX_GROUPS,
    "sigmoid-groups": SIGMOID_GROUPS,
}
MORE = {
    "softmax-16-top4": {"num_moe_experts": 16, "moe_router_topk": 4},
    "sigmoid-16-top4": {**SIGMOID, "num_moe_experts": 16, "moe_router_topk": 4},
    "softmax-top1-pre-softmax": {"moe_router_topk": 1, "moe_router_pre_softmax": True},
    "sigmoid-top1": {**SIGMOID, "moe_router_topk": 1},
    "softmax-pre-softmax": {"moe_router_pre_softmax": True},
    "sigmoid-groups-scaled": {**SIGMOID_GROUPS, "moe_router_topk_scaling_factor": 2.5},
    "seq-aux-loss": {"moe_router_load_balancing_type": "seq_aux_loss", "moe_aux_loss_coeff": 0.02},
    "aux+seq-aux+z-loss": {"moe_router_load_balancing_type": ["aux_loss", "seq_aux_loss"],
                           "moe_aux_loss_coeff": [0.01, 0.02], "moe_z_loss_coeff": 1e-3},
    "no-aux-loss": {"moe_router_load_balancing_type": "none", "moe_aux_loss_coeff": 0.0},
    "capacity-probs": {"moe_expert_capacity_factor": 1.0},
    "capacity-position-padded": {**SIGMOID, "moe_expert_capacity_factor": 1.0, "moe_token_drop_policy": "position",
                                 "moe_pad_expert_input_to_capacity": True},
    "sinkhorn": {"moe_router_load_balancing_type": "sinkhorn", "moe_aux_loss_coeff": 0.0},
}


def cases(configs: dict[str, dict], flag: bool | None, **extra: object) -> list[dict]:
    """One probe case per config; ``flag`` True/False sets the flag, None leaves it out (upstream)."""
    out = []
    for config in configs.values():
        config = dict(config)
        if flag is not None:
            config[FLAG] = flag
        out.append({"config": config, **extra})
    return out


def probe(tree: Path, tmp_path: Path, name: str, case_list: list[dict], **opts: object) -> dict:
    out = tmp_path / f"{name}.pt"
    run_probe(tree, "fused_router_probe.py", str(out), json_arg({"cases": case_list, **opts}))
    return torch.load(out)


def assert_accepted(name: str, up: dict, fused: dict, probs_tol: float = 1e-6, grad_tol: float = 1e-5) -> None:
    """The spec's acceptance: same routing map, probs within 1e-6, same aux losses, grads within 1e-5."""
    assert up.keys() == fused.keys(), name
    assert any(key.startswith("map") for key in up)
    for key, want in up.items():
        got = fused[key]
        if key.startswith(("map", "aux:", "tokens_per_expert", "global_tokens_per_expert", "padding")):
            assert torch.equal(want, got), f"{name}: {key} differs"
        elif key.startswith("probs"):
            assert want.dtype == got.dtype, f"{name}: {key} dtype"
            torch.testing.assert_close(got, want, rtol=0, atol=probs_tol, msg=f"{name}: {key}")
        elif key.startswith("grad"):
            torch.testing.assert_close(got, want, rtol=0, atol=grad_tol, msg=f"{name}: {key}")
        else:
            raise AssertionError(f"unexpected result {key}")


def assert_bitwise(name: str, up: dict, patched: dict) -> None:
    assert up.keys() == patched.keys(), name
    for key, want in up.items():
        assert torch.equal(want, patched[key]), f"{name}: {key} differs"


@pytest.fixture(scope="module")
def upstream_runs(trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Upstream's unfused routing for every configuration here, in one subprocess."""
    tmp = tmp_path_factory.mktemp("fused-router-up")
    configs = {**ACCEPTANCE, **MORE}
    runs = probe(trees["upstream"], tmp, "up", cases(configs, None) + cases(configs, None, padding=True))
    n = len(configs)
    return {"plain": dict(zip(configs, runs["cases"][:n])), "padding": dict(zip(configs, runs["cases"][n:]))}


def test_fused_matches_upstream_unfused(trees: dict[str, Path], tmp_path: Path, upstream_runs: dict) -> None:
    """The acceptance configurations and the rest of routing (top-1, pre-softmax, scaling,
    seq/aux/z losses, capacity dropping, sinkhorn), all through the fused router."""
    configs = {**ACCEPTANCE, **MORE}
    fused = probe(trees["patched"], tmp_path, "fused", cases(configs, True), log=True)
    for name, got in zip(configs, fused["cases"]):
        assert_accepted(name, upstream_runs["plain"][name], got)
    assert any("by the portable torch path" in line for line in fused["log"])  # the fused router ran


def test_fused_matches_upstream_with_padding_mask(trees: dict[str, Path], tmp_path: Path, upstream_runs: dict) -> None:
    """padding_mask is supported: z-loss, aux scores and counts see it as upstream's do."""
    configs = {**ACCEPTANCE, **MORE}
    fused = probe(trees["patched"], tmp_path, "fused-padding", cases(configs, True, padding=True))
    for name, got in zip(configs, fused["cases"]):
        assert_accepted(name, upstream_runs["padding"][name], got)
    # the mask changes the aux loss, so the comparison above is not vacuous
    plain, padded = upstream_runs["plain"]["softmax"], upstream_runs["padding"]["softmax"]
    assert not torch.equal(plain["aux:load_balancing_loss0"], padded["aux:load_balancing_loss0"])


def test_group_limited_cases_really_limit(upstream_runs: dict) -> None:
    """The group-limited configurations route differently from plain top-k on the same logits,
    so the acceptance covers group selection (with top-1 per group it would be a no-op)."""
    runs = upstream_runs["plain"]
    for grouped, plain in (("softmax-groups", "softmax-16-top4"), ("sigmoid-groups", "sigmoid-16-top4")):
        assert not torch.equal(runs[grouped]["map2"], runs[plain]["map2"]), grouped


def test_flag_on_with_disable_primus_topk_router_is_upstream_bit_for_bit(
    trees: dict[str, Path], tmp_path: Path, upstream_runs: dict
) -> None:
    configs = {**ACCEPTANCE, **MORE}
    runs = probe(trees["patched"], tmp_path, "disabled",
                 [{"config": {**c["config"], "disable_primus_topk_router": True}} for c in cases(configs, True)],
                 log=True)
    for name, got in zip(configs, runs["cases"]):
        assert_bitwise(name, upstream_runs["plain"][name], got)
    assert runs["log"] == []  # the fused router never ran


def test_flag_off_is_upstream_bit_for_bit(trees: dict[str, Path], tmp_path: Path, upstream_runs: dict) -> None:
    configs = {**ACCEPTANCE, **MORE}
    runs = probe(trees["patched"], tmp_path, "off", cases(configs, False) + cases(configs, False, padding=True))
    n = len(configs)
    for name, got in zip(configs, runs["cases"][:n]):
        assert_bitwise(name, upstream_runs["plain"][name], got)
    for name, got in zip(configs, runs["cases"][n:]):
        assert_bitwise(name, upstream_runs["padding"][name], got)


def test_bf16_logits(trees: dict[str, Path], tmp_path: Path) -> None:
    """bf16 logits: identical routing and aux losses; probs and gradients within bf16 rounding."""
    configs = {"softmax": {}, "sigmoid-groups": SIGMOID_GROUPS}
    up = probe(trees["upstream"], tmp_path, "up-bf16", cases(configs, None, dtype="bfloat16"))
    fused = probe(trees["patched"], tmp_path, "fused-bf16", cases(configs, True, dtype="bfloat16"))
    for name, want, got in zip(configs, up["cases"], fused["cases"]):
        assert_accepted(name, want, got, probs_tol=4e-3, grad_tol=2e-3)


def test_eval_routes_without_aux_scores(trees: dict[str, Path], tmp_path: Path) -> None:
    """Under no_grad in eval mode no aux loss is taken; routing still matches."""
    configs = {"softmax": {}, "sigmoid-groups": SIGMOID_GROUPS}
    up = probe(trees["upstream"], tmp_path, "up-eval", cases(configs, None, eval=True))
    fused = probe(trees["patched"], tmp_path, "fused-eval", cases(configs, True, eval=True))
    for name, want, got in zip(configs, up["cases"], fused["cases"]):
        assert not any(key.startswith(("grad", "aux:")) for key in got)
        assert_accepted(name, want, got)


def test_even_force_balancing_applies_last(trees: dict[str, Path], tmp_path: Path) -> None:
    """With force balancing "even", the fused router ends with the same round robin as upstream
    routing + the v0.1.0 "even" override."""
    even = {"moe_router_force_load_balancing": True, "moe_router_force_load_balancing_type": "even"}
    configs = {"softmax": even, "sigmoid-groups": {**SIGMOID_GROUPS, **even}}
    off = probe(trees["patched"], tmp_path, "even-off", cases(configs, False))
    on = probe(trees["patched"], tmp_path, "even-on", cases(configs, True))
    for name, want, got in zip(configs, off["cases"], on["cases"]):
        assert_accepted(name, want, got)
        n, experts = want["map0"].shape
        topk = 4 if name == "sigmoid-groups" else 2
        for t in range(n):
            assert got["map0"][t].nonzero().flatten().tolist() == sorted((t * topk + k) % experts for k in range(topk))


def test_log_names_the_torch_backend_once(trees: dict[str, Path], tmp_path: Path) -> None:
    runs = probe(trees["patched"], tmp_path, "log", cases({"a": {}, "b": SIGMOID}, True), log=True)
    info = [line for line in runs["log"] if line.startswith("INFO ")]
    assert info == [
        "INFO megatron.core._primus.fused_router moe_use_fused_router_with_aux_score: top-k routing and "
        "aux-loss scores by the portable torch path (scores computed once for routing and aux loss)"
    ]


def test_dispatch_to_primus_turbo_where_importable(trees: dict[str, Path], tmp_path: Path, upstream_runs: dict) -> None:
    """Dispatch: with a ``primus_turbo`` stand-in importable (upstream's unfused numbers behind
    Turbo's entry point), the router calls it once per routing and aux-score step, and what it
    returns (an int map among it) goes through upstream's remaining steps; routers whose
    configuration Turbo's op cannot do (pre-softmax) fall back to torch, and the log says so."""
    configs = {name: ACCEPTANCE[name] for name in ACCEPTANCE} | {"softmax-pre-softmax": MORE["softmax-pre-softmax"],
                                                                 "capacity-probs": MORE["capacity-probs"]}
    runs = probe(trees["patched"], tmp_path, "turbo", cases(configs, True) + cases(configs, True, padding=True),
                 stand_in="primus_turbo", log=True)
    n = len(configs)
    for name, got in zip(configs, runs["cases"][:n]):
        assert_accepted(name, upstream_runs["plain"][name], got)
    for name, got in zip(configs, runs["cases"][n:]):
        assert_accepted(name, upstream_runs["padding"][name], got)
    steps = 3
    assert runs["calls"]["primus_turbo"] == steps * 2 * (len(configs) - 1)  # all but pre-softmax
    info = [line.split(": ", 1)[1] for line in runs["log"] if line.startswith("INFO ")]
    assert info == [
        "top-k routing and aux-loss scores by Primus-Turbo's fused kernel "
        "(primus_turbo.pytorch.ops.fused_group_topk_routing_with_aux_score)",
        "not using Primus-Turbo's fused kernel (primus_turbo.pytorch.ops.fused_group_topk_routing_with_aux_score) "
        "for a router: it has no moe_router_pre_softmax mode",
        "top-k routing and aux-loss scores by the portable torch path (scores computed once for routing and aux loss)",
    ]


def test_dispatch_passes_primus_turbo_the_config_arguments(trees: dict[str, Path], tmp_path: Path) -> None:
    """Dispatch: top-k, groups, selected groups, score function and scaling factor reach Turbo's
    entry point as the config sets them (recorded by the stand-in)."""
    runs = probe(trees["patched"], tmp_path, "turbo-args",
                 cases({"g": {**SIGMOID_GROUPS, "moe_router_topk_scaling_factor": 2.5}}, True), stand_in="primus_turbo")
    assert runs["calls"]["args"] == [4, 4, 2, "sigmoid", 2.5]
    runs = probe(trees["patched"], tmp_path, "turbo-args-plain",
                 cases({"p": {"moe_router_num_groups": 4}}, True), stand_in="primus_turbo")
    assert runs["calls"]["args"] == [2, None, None, "softmax", None]  # groups without group_topk: not limited


def test_dispatch_to_transformer_engine_where_available(
    trees: dict[str, Path], tmp_path: Path, upstream_runs: dict
) -> None:
    """Dispatch: without primus_turbo but with TE's fused router entry points bound in moe_utils
    (stand-ins computing upstream's unfused numbers), the router calls them with each config's
    arguments, as upstream's moe_router_fusion does, and hands their results on unchanged."""
    configs = {**ACCEPTANCE, "softmax-pre-softmax": MORE["softmax-pre-softmax"], "capacity-probs": MORE["capacity-probs"]}
    runs = probe(trees["patched"], tmp_path, "te", cases(configs, True) + cases(configs, True, padding=True),
                 stand_in="transformer_engine", log=True)
    n = len(configs)
    for name, got in zip(configs, runs["cases"][:n]):
        assert_bitwise(name, upstream_runs["plain"][name], got)  # the stand-in computes upstream's numbers
    for name, got in zip(configs, runs["cases"][n:]):
        assert_bitwise(name, upstream_runs["padding"][name], got)
    assert runs["calls"]["te_topk"] == runs["calls"]["te_aux"] == 3 * 2 * n
    want_topk, want_aux = set(), set()
    for config in configs.values():
        c = {**ROUTER_CONFIG, **config}
        want_topk.add((c["moe_router_topk"], c.get("moe_router_pre_softmax", False), c.get("moe_router_num_groups"),
                       c.get("moe_router_group_topk"), c.get("moe_router_topk_scaling_factor"),
                       c.get("moe_router_score_function", "softmax"), False))
        want_aux.add((c["moe_router_topk"], c.get("moe_router_score_function", "softmax")))
    assert {tuple(args) for args in runs["calls"]["te_topk_args"]} == want_topk
    assert {tuple(args) for args in runs["calls"]["te_aux_args"]} == want_aux
    info = [line.split(": ", 1)[1] for line in runs["log"] if line.startswith("INFO ")]
    assert info == ["top-k routing and aux-loss scores by TransformerEngine's fused router "
                    "(fused_topk_with_score_function + fused_compute_score_for_moe_aux_loss)"]


# -- expert bias and the global aux loss: their buffers live on the CUDA device -> cpu-test trees


BIAS = {**SIGMOID, "moe_router_enable_expert_bias": True, "moe_router_load_balancing_type": "none",
        "moe_aux_loss_coeff": 0.0}
CPU_CASES = {
    "expert-bias": ({**BIAS}, {"expert_bias": True}),
    "expert-bias-groups": ({**SIGMOID_GROUPS, **BIAS}, {"expert_bias": True}),
    "expert-bias-aux-loss": ({**BIAS, "moe_router_load_balancing_type": "aux_loss", "moe_aux_loss_coeff": 0.01},
                             {"expert_bias": True}),
    "global-aux-loss": ({"moe_router_load_balancing_type": "global_aux_loss"}, {}),
    "global-aux-loss-groups-padding": ({**SOFTMAX_GROUPS, "moe_router_load_balancing_type": "global_aux_loss"},
                                       {"padding": True}),
}


def _cpu_cases(flag: bool | None) -> list[dict]:
    out = []
    for config, extra in CPU_CASES.values():
        config = dict(config)
        if flag is not None:
            config[FLAG] = flag
        out.append({"config": config, **extra})
    return out


def test_expert_bias_and_global_aux_loss(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """Expert bias steers selection as upstream's does (unlike Primus's fused path), its token
    counts match; the global aux loss and its running counts match."""
    up = probe(cpu_trees["upstream"], tmp_path, "up", _cpu_cases(None))
    fused = probe(cpu_trees["patched"], tmp_path, "fused", _cpu_cases(True))
    for name, want, got in zip(CPU_CASES, up["cases"], fused["cases"]):
        assert_accepted(name, want, got)
    # the bias mattered: without it, the routing would differ
    no_bias = probe(cpu_trees["upstream"], tmp_path, "no-bias", [{"config": BIAS}])["cases"][0]
    assert not torch.equal(no_bias["map0"], up["cases"][0]["map0"])


def test_dispatch_skips_primus_turbo_with_expert_bias(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """Dispatch: Primus-Turbo's op has no expert-bias input, so with its stand-in importable such a
    router still routes by torch, with the bias, and never calls Turbo."""
    up = probe(cpu_trees["upstream"], tmp_path, "up", _cpu_cases(None)[:2])
    fused = probe(cpu_trees["patched"], tmp_path, "turbo", _cpu_cases(True)[:2], stand_in="primus_turbo", log=True)
    for name, want, got in zip(CPU_CASES, up["cases"], fused["cases"]):
        assert_accepted(name, want, got)
    assert "primus_turbo" not in fused["calls"]
    assert any("for a router: its kernel ignores expert_bias" in line for line in fused["log"])


def test_expert_bias_counts_skip_padding(cpu_trees: dict[str, Path], tmp_path: Path) -> None:
    """Expert bias with a padding mask: upstream 0.16.1 raises in ``_apply_expert_bias`` (it
    broadcasts the [tokens] mask against the [tokens, experts] map); the fused router counts the
    non-padding tokens' experts, and routes as without the mask."""
    config = {**BIAS, "moe_router_load_balancing_type": "aux_loss", "moe_aux_loss_coeff": 0.01, FLAG: True}
    with pytest.raises(AssertionError, match="Attempting to broadcast|must match the size"):
        probe(cpu_trees["upstream"], tmp_path, "up", [{"config": BIAS, "expert_bias": True, "padding": True}])
    runs = probe(cpu_trees["patched"], tmp_path, "fused",
                 [{"config": config, "expert_bias": True, "padding": True}, {"config": config, "expert_bias": True}])
    padded, plain = runs["cases"]
    counts = torch.zeros_like(padded["tokens_per_expert0"])
    for step in range(3):
        assert torch.equal(padded[f"map{step}"], plain[f"map{step}"])
        torch.testing.assert_close(padded[f"probs{step}"], plain[f"probs{step}"], rtol=0, atol=0)
        counts += (padded[f"map{step}"] & ~padded[f"padding{step}"].unsqueeze(-1)).sum(dim=0)
        assert torch.equal(padded[f"tokens_per_expert{step}"], counts)
    assert not torch.equal(padded["tokens_per_expert2"], plain["tokens_per_expert2"])
