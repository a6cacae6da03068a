"""moe_permute_fusion (spec D4): retired on the pinned upstream, applied where upstream lacks it,
and usable without TransformerEngine through megatron's own torch permutation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewriter.build import Applied
from rewriter.emit.docs import render_patch_notes
from rewriter.engine import apply_series
from rewriter.upstream import default_cache_dir, load_pin, resolve_release
from tests.patches.conftest import REPO
from tests.procs import fork_server

pytestmark = pytest.mark.slow

FIELD = "moe_permute_fusion: bool = False"


def patch(applied: Applied, patch_id: str):
    return next(p for p in applied.patchsets.series() if p.id == patch_id)


def test_retired_on_the_pinned_upstream(applied: Applied) -> None:
    """0.16.1 defines the field: every edit is already there, the patch reports itself retired."""
    assert applied.result.patch_status(patch(applied, "moe_permute_fusion")) == "retired"
    assert {r.status for r in applied.result.reports if r.patch == "moe_permute_fusion"} == {"already-present"}
    row = next(line for line in render_patch_notes(applied.patchsets).splitlines() if "`moe_permute_fusion`" in line)
    assert "| present: upstream defines TransformerConfig.moe_permute_fusion" in row


def test_applies_on_a_release_without_it(applied: Applied) -> None:
    """megatron-core 0.10.0 (PyPI sdist, verified by digest) has no moe_permute_fusion: it is added."""
    tree = resolve_release("0.10.0", load_pin(REPO / "vendor" / "upstream.yaml"), default_cache_dir(REPO))
    assert FIELD not in tree.read("megatron/core/transformer/transformer_config.py")
    result = apply_series([patch(applied, "moe_permute_fusion")], tree.read, tree.label)
    assert result.patch_status(patch(applied, "moe_permute_fusion")) == "applied"
    assert FIELD in result.tree({"moe_permute_fusion"})["megatron/core/transformer/transformer_config.py"]


PROBE = """
import json, logging, sys
import torch
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.moe import moe_utils

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
try:
    TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, num_moe_experts=4, moe_permute_fusion=True)
    config_ok = True
except (ImportError, ValueError) as exc:
    config_ok = f"{type(exc).__name__}: {exc}"
torch.manual_seed(0)
tokens = torch.randn(6, 8, requires_grad=True)
routing_map = torch.zeros(6, 4, dtype=torch.bool)
routing_map[torch.arange(6), torch.tensor([0, 1, 2, 3, 0, 1])] = True
routing_map[torch.arange(6), torch.tensor([2, 3, 0, 1, 3, 2])] = True
probs = torch.rand(6, 4) * routing_map
out = {"config_ok": config_ok, "inputs": [tokens.tolist(), routing_map.tolist(), probs.tolist()]}
for fused in (False, True):
    try:
        permuted, _, order = moe_utils.permute(tokens, routing_map, fused=fused)
        restored = moe_utils.unpermute(permuted, order, tokens.shape, probs=probs, routing_map=routing_map, fused=fused)
        restored.sum().backward()
        out[str(fused)] = {"permuted": permuted.tolist(), "restored": restored.tolist(), "grad": tokens.grad.tolist()}
        tokens.grad = None
    except (ImportError, ValueError) as exc:
        out[str(fused)] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def probe(tree: Path) -> tuple[dict, str]:
    proc = fork_server(tree).run("-c", PROBE)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def reference(inputs: list) -> dict[str, torch.Tensor]:
    """Permute and unpermute computed by hand, independently of megatron: the permuted rows are
    each expert's tokens in token order, expert by expert; unpermuting with probs gives every token
    back scaled by the sum of its probs, which is also the gradient of the restored sum."""
    tokens, routing_map, probs = (torch.tensor(x) for x in inputs)
    permuted = torch.cat([tokens[routing_map[:, e]] for e in range(routing_map.shape[1])])
    weight = probs.sum(dim=1, keepdim=True)
    return {"permuted": permuted, "restored": tokens * weight, "grad": weight.expand_as(tokens)}


def assert_matches_reference(got: dict, want: dict[str, torch.Tensor]) -> None:
    """Permuting copies rows: exact. Unpermuting sums a token's k weighted copies (k=2) in fp32:
    within two roundings of the reference's product of sums."""
    assert torch.equal(torch.tensor(got["permuted"]), want["permuted"])
    for key in ("restored", "grad"):
        torch.testing.assert_close(torch.tensor(got[key]), want[key], rtol=4 * torch.finfo(torch.float32).eps, atol=0)


def test_without_te_upstream_refuses_the_flag(trees: dict[str, Path]) -> None:
    """Upstream 0.16.1 without TE: the config fails (its check imports names moe_utils never
    binds without TE), and permute(fused=True) raises."""
    got, _ = probe(trees["upstream"])
    assert got["config_ok"].startswith("ImportError: cannot import name 'fused_permute'")
    assert got["True"] == "ValueError: fused_permute is not available. Please install TE >= 2.1.0."


def test_without_te_the_patched_flag_uses_torch_ops(trees: dict[str, Path]) -> None:
    """Config accepted; permute/unpermute with fused=True give the hand-computed permutation, the
    restored tokens and their gradients (as the unfused path does, checked against the same
    reference); one warning per function says which path runs."""
    got, stderr = probe(trees["patched"])
    assert got["config_ok"] is True
    want = reference(got["inputs"])
    assert_matches_reference(got["True"], want)
    assert_matches_reference(got["False"], want)
    assert stderr.count("TransformerEngine's fused permute is not available") == 1
    assert stderr.count("TransformerEngine's fused unpermute is not available") == 1
