"""override_call_kwarg: a keyword the call already passes gets another value behind the flag."""

from __future__ import annotations

from helpers import assert_not_applied, assert_op, load, run_op

from rewriter.ops.base import Status
from rewriter.ops.override_call_kwarg import OverrideCallKwargOp

ARGS = dict(target="Attention.__init__", guard="self.config.fast_path", call="build_module",
            keyword="v_channels", value="self.q_head_dim")

BEFORE = """
class Attention:
    def __init__(self, config):
        self.config = config
        self.q_head_dim = 24
        self.core = build_module(
            spec,
            k_channels=self.q_head_dim,
            v_channels=self.config.v_head_dim,
        )
"""


def test_value_is_chosen_by_the_flag() -> None:
    """The upstream expression stays, as the else branch: flag off evaluates exactly it."""
    after = assert_op(OverrideCallKwargOp, BEFORE, """
class Attention:
    def __init__(self, config):
        self.config = config
        self.q_head_dim = 24
        self.core = build_module(
            spec,
            k_channels=self.q_head_dim,
            v_channels=(self.q_head_dim if self.config.fast_path else self.config.v_head_dim),
        )
""", **ARGS)

    class Config:
        v_head_dim = 16

        def __init__(self, on: bool) -> None:
            self.fast_path = on

    namespace = load(after, spec=None, build_module=lambda spec, **kw: kw)
    assert namespace["Attention"](Config(False)).core["v_channels"] == 16
    assert namespace["Attention"](Config(True)).core["v_channels"] == 24


def test_call_without_the_keyword_is_missing() -> None:
    """Nothing to override: the message points to add_call_kwarg."""
    result = run_op(OverrideCallKwargOp, BEFORE.replace("            v_channels=self.config.v_head_dim,\n", ""), **ARGS)
    assert result.status is Status.MISSING
    assert "add_call_kwarg" in result.message


def test_only_calls_passing_the_keyword_count() -> None:
    """Another call to the same function without the keyword (``linear_proj`` beside
    ``core_attention`` in MultiLatentAttention) is not a match."""
    source = BEFORE + "        self.proj = build_module(spec, bias=False)\n"
    result = run_op(OverrideCallKwargOp, source, **ARGS)
    assert result.status is Status.APPLIED and result.count == 1
    assert "self.proj = build_module(spec, bias=False)" in result.module.code


def test_no_matching_call_is_missing_with_candidates() -> None:
    result = run_op(OverrideCallKwargOp, BEFORE, **{**ARGS, "call": "build_modul"})
    assert result.status is Status.MISSING
    assert "build_module" in result.candidates


def test_two_calls_when_one_is_expected_is_ambiguous() -> None:
    source = BEFORE + "        self.other = build_module(spec, v_channels=8)\n"
    assert_not_applied(OverrideCallKwargOp, source, Status.AMBIGUOUS, **ARGS)


def test_already_overridden_is_present() -> None:
    source = BEFORE.replace("v_channels=self.config.v_head_dim",
                            "v_channels=(self.q_head_dim if self.config.fast_path else self.config.v_head_dim)")
    assert_not_applied(OverrideCallKwargOp, source, Status.PRESENT, **ARGS)
