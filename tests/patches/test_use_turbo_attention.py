"""enable_primus_turbo + use_turbo_attention: core attention on the Turbo backend, flag off is upstream.

The torch path (TorchSDPAAttention, and the compiled rotary embedding) runs here for real,
against upstream's DotProductAttention and against float64 attention computed by its
definition; fp32 tolerances are set from the kernels (summation order over at most 24-wide head
dims and 12 keys: a few float32 ulps, far under 1e-5). The Primus-Turbo branch is a DISPATCH test:
``primus_turbo`` is a stand-in package written by this test (its ``flash_attn_func`` records its
arguments and computes with torch SDPA), so what is tested is which class is chosen and what it
passes, never the Primus-Turbo kernel. TransformerEngine is not installed here: its branch is
tested only for being refused when forced.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.patches.turbo_probes import probe_result, write_standin

pytestmark = pytest.mark.slow

FP32 = 1e-5

STANDIN_OPS = '''
"""A stand-in for Primus-Turbo's ops, written by tests/patches/test_use_turbo_attention.py."""
import torch
import torch.nn.functional as F

CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    CALLS.append({"q": list(q.shape), "k": list(k.shape), "v": list(v.shape), "dropout_p": dropout_p,
                  "softmax_scale": softmax_scale, "causal": causal})
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                         scale=softmax_scale, enable_gqa=q.size(2) != k.size(2))
    return out.transpose(1, 2)
'''


def probe(tree: Path, mode: str, *, extra_path: Path | None = None,
          env: dict[str, str] | None = None) -> dict:
    return probe_result("turbo_attention_probe.py", tree, mode, extra_path=extra_path, env=env)


@pytest.fixture(scope="module")
def patched(cpu_trees: dict[str, Path]) -> Path:
    return cpu_trees["patched"]


def test_flag_off_keeps_upstream_attention_and_on_matches_it(patched: Path) -> None:
    got = probe(patched, "layers")
    assert got["types"] == {"off": "DotProductAttention", "enable_only": "DotProductAttention",
                            "attention_only": "DotProductAttention", "on": "TorchSDPAAttention"}
    for mask in ("causal", "padding"):
        assert got[mask]["output"] < FP32 and got[mask]["grad_hidden"] < FP32 and got[mask]["grad_params"] < FP32, got
    assert got["mla"]["type"] == "TorchSDPAAttention"
    assert got["mla"]["output"] < FP32 and got["mla"]["grad_hidden"] < FP32 and got["mla"]["grad_params"] < FP32


def test_torch_path_is_attention_by_definition(patched: Path) -> None:
    got = probe(patched, "kernels")
    for name, case in got.items():
        assert case["output"] < FP32 and case["grads"] < FP32, (name, case)
    assert got["mla_dims_causal"]["shape"] == [12, 2, 4 * 16]  # value heads narrower than query heads
    assert got["causal_newest_queries"]["shape"] == [5, 2, 4 * 16]


def test_what_the_backend_cannot_do_is_refused_by_name(patched: Path) -> None:
    got = probe(patched, "refusals")
    assert "window_size=(4, 0)" in got["window"] and "torch backend" in got["window"]
    assert "softmax_type='off-by-one'" in got["sinks"]
    assert "log_max_attention_logit" in got["qk_clip"]
    assert got["window_flags_off"] == got["sinks_flags_off"] == got["qk_clip_flags_off"] == "accepted"
    assert "packed (THD) sequences" in got["packed"]
    backend_line, no_feature_line = got["log"]  # each once per process, however many configs are built
    assert backend_line.startswith("Primus Turbo backend: torch ")
    assert backend_line.endswith(" for use_turbo_attention (primus_turbo is not installed on this host: no "
                                 "Primus-Turbo kernel runs)")
    assert no_feature_line == ("enable_primus_turbo: no Turbo feature flag is on (use_turbo_attention, ...); "
                               "the model is built as without Turbo")


def test_rotary_embedding_fused_equals_upstream(patched: Path) -> None:
    got = probe(patched, "rope")
    for case in got.values():
        assert case["output"] < FP32 and case["grad"] < FP32, got


def test_dispatch_picks_torch_and_refuses_a_forced_backend_that_is_absent(patched: Path) -> None:
    assert probe(patched, "backend")["class"] == "TorchSDPAAttention"
    forced = probe(patched, "backend", env={"PRIMUS_TURBO_BACKEND": "transformer_engine"})
    assert forced["error"] == "PRIMUS_TURBO_BACKEND=transformer_engine: transformer_engine.pytorch does not import " \
                              "on this host"
    assert "choose one of primus_turbo, transformer_engine, torch" in probe(
        patched, "backend", env={"PRIMUS_TURBO_BACKEND": "cuda"})["error"]


def test_dispatch_to_a_primus_turbo_standin(patched: Path, tmp_path: Path) -> None:
    """DISPATCH test: the stand-in records what Primus-Turbo's flash_attn_func would be given."""
    got = probe(patched, "backend", extra_path=write_standin(tmp_path, STANDIN_OPS))
    assert got["backend"] == "primus_turbo 0.0-standin" and got["class"] == "PrimusTurboAttention"
    assert got["calls"] == [{"q": [3, 12, 4, 16], "k": [3, 12, 2, 16], "v": [3, 12, 2, 16], "dropout_p": 0.0,
                             "softmax_scale": 16 ** -0.5, "causal": True}]
    assert got["output"] < FP32
    assert "computes causal, no_mask attention, not padding" in got["padding"]
