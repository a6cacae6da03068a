"""decoder_pipeline_manual_split_list (spec M7): retired on the pinned upstream, whose
pipeline_model_parallel_layout is the same feature (the runtime maps the list onto it: trained in
tests/cpu/test_pipeline_flags.py), and a rewrite of get_num_layers_to_build and the layer offset on
megatron-core 0.10.0, which has no layout. The 0.10.0 rewrite is run here: its layer counts and
offsets per (rank, model chunk), its refusals, and upstream's arithmetic with the flag unset."""

from __future__ import annotations

import json
import shutil

import pytest

from rewriter.build import Applied
from rewriter.emit.docs import render_patch_notes
from rewriter.engine import apply_series
from rewriter.upstream import default_cache_dir, load_pin, resolve_release
from tests.patches.conftest import REPO
from tests.procs import run_python

pytestmark = pytest.mark.slow

PATCH = "decoder_pipeline_manual_split_list"


def patch(applied: Applied):
    return next(p for p in applied.patchsets.series() if p.id == PATCH)


def test_retired_on_the_pinned_upstream(applied: Applied) -> None:
    """0.16.1 has pipeline_model_parallel_layout: no edit is applied and the patch reports itself retired."""
    assert applied.result.patch_status(patch(applied)) == "retired"
    reports = [r for r in applied.result.reports if r.patch == PATCH]
    assert reports and {r.status for r in reports} == {"already-present"}
    assert all("upstream has the feature" in r.message for r in reports)
    assert not any(PATCH in text for text in applied.result.tree({p.id for p in applied.patchsets.series()}).values())
    row = next(line for line in render_patch_notes(applied.patchsets).splitlines() if f"`{PATCH}`" in line)
    assert "present: upstream's TransformerConfig.pipeline_model_parallel_layout" in row


PROBE = """
import json, sys
import torch
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_layer import TransformerLayer

def stages(pp, vp, **config):
    out = []
    for rank in range(pp):
        for chunk in range(vp or 1):
            ps.get_pipeline_model_parallel_rank = lambda: rank
            ps.get_virtual_pipeline_model_parallel_world_size = lambda: vp
            ps.get_virtual_pipeline_model_parallel_rank = lambda: chunk
            ps.is_inside_encoder = lambda: False
            ps.get_pipeline_model_parallel_decoder_start = lambda: None
            cfg = TransformerConfig(hidden_size=8, num_attention_heads=2, pipeline_model_parallel_size=pp, pipeline_dtype=torch.float32,
                                    virtual_pipeline_model_parallel_size=vp, **config)
            out.append([rank, chunk, get_num_layers_to_build(cfg), TransformerLayer._get_layer_offset(cfg)])
    return out

def refused(**config):
    try:
        TransformerConfig(hidden_size=8, num_attention_heads=2, pipeline_dtype=torch.float32, **config)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None

print(json.dumps({
    "pp2": stages(2, None, num_layers=4, decoder_pipeline_manual_split_list=[1, 3]),
    "pp2vp2": stages(2, 2, num_layers=6, decoder_pipeline_manual_split_list=[1, 2, 2, 1]),
    "pp4vp2": stages(4, 2, num_layers=16, decoder_pipeline_manual_split_list=[2, 3, 2, 2, 2, 2, 2, 1]),
    "even": stages(2, 2, num_layers=8),
    "sum": refused(num_layers=5, pipeline_model_parallel_size=2, decoder_pipeline_manual_split_list=[1, 3]),
    "length": refused(num_layers=4, pipeline_model_parallel_size=2, decoder_pipeline_manual_split_list=[1, 1, 2]),
    "zero": refused(num_layers=4, pipeline_model_parallel_size=2, decoder_pipeline_manual_split_list=[0, 4]),
    "pp1": refused(num_layers=4, decoder_pipeline_manual_split_list=[4]),
    "type": refused(num_layers=4, pipeline_model_parallel_size=2, decoder_pipeline_manual_split_list=[1, True]),
}))
"""


@pytest.fixture(scope="module")
def release_0_10(applied: Applied, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """megatron-core 0.10.0 (PyPI sdist, verified by digest) with this one patch applied, probed."""
    tree = resolve_release("0.10.0", load_pin(REPO / "vendor" / "upstream.yaml"), default_cache_dir(REPO))
    result = apply_series([patch(applied)], tree.read, tree.label)
    assert result.patch_status(patch(applied)) == "applied"
    out = tmp_path_factory.mktemp("mcore-0.10.0") / "tree"
    shutil.copytree(tree.root / "megatron", out / "megatron")
    for path, text in result.tree({PATCH}).items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    proc = run_python("-W", "ignore", "-c", PROBE, tree=out)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_layers_and_offsets_on_0_10(release_0_10: dict) -> None:
    """[rank, chunk, layers built, offset of the first one]; global order: every rank's chunk 0, then chunk 1."""
    assert release_0_10["pp2"] == [[0, 0, 1, 0], [1, 0, 3, 1]]
    assert release_0_10["pp2vp2"] == [[0, 0, 1, 0], [0, 1, 2, 3], [1, 0, 2, 1], [1, 1, 1, 5]]
    # the spec's example: 16 layers, pp=4, vpp=2, rank r chunk v builds split[2r + v]
    split = [2, 3, 2, 2, 2, 2, 2, 1]
    got = release_0_10["pp4vp2"]
    assert [n for _, _, n, _ in got] == split
    order = sorted(got, key=lambda s: (s[1], s[0]))  # megatron's global layer order
    assert [o for *_, o in order] == [sum(s[2] for s in order[:i]) for i in range(len(order))]


def test_flag_unset_is_upstream_arithmetic_on_0_10(release_0_10: dict) -> None:
    """8 layers, pp=2, vpp=2 without the flag: upstream's even interleaved split (2 per chunk)."""
    assert release_0_10["even"] == [[0, 0, 2, 0], [0, 1, 2, 4], [1, 0, 2, 2], [1, 1, 2, 6]]


@pytest.mark.parametrize(("case", "message"), [
    ("sum", "places 4 layers, num_layers is 5"),
    ("length", "has 3 entries; pipeline_model_parallel_size x virtual_pipeline_model_parallel_size is 2 x 1 = 2"),
    ("zero", "every stage needs at least one layer"),
    ("pp1", "needs pipeline_model_parallel_size > 1"),
    ("type", "must be list[int] or None"),
])
def test_bad_splits_are_refused_on_0_10(release_0_10: dict, case: str, message: str) -> None:
    assert release_0_10[case] is not None and message in release_0_10[case]
