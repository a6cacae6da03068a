"""extend_condition: behind the flag, an if also requires one more condition."""

from __future__ import annotations

from helpers import assert_not_applied, assert_op, load, run_op

from rewriter.ops.base import Status
from rewriter.ops.extend_condition import ExtendConditionOp

ARGS = dict(target="Config.check", guard="self.fast_path", anchor="if self.fast_path:", condition="kernels_available()")

BEFORE = """
class Config:
    def check(self):
        if self.fast_path:
            raise ValueError("kernels missing")
        return "ok"
"""

AFTER = """
class Config:
    def check(self):
        if self.fast_path and (kernels_available() if self.fast_path else True):
            raise ValueError("kernels missing")
        return "ok"
"""


def test_condition_is_added_behind_the_flag() -> None:
    """Flag off: the extra term is True, the branch is taken exactly as upstream; flag on: only
    if the extra condition also holds."""
    namespace = load(assert_op(ExtendConditionOp, BEFORE, AFTER, **ARGS), kernels_available=lambda: False)
    config = namespace["Config"]()
    config.fast_path = True
    assert config.check() == "ok"
    config.fast_path = False
    assert config.check() == "ok"


def test_missing_header_lists_the_nearest() -> None:
    result = run_op(ExtendConditionOp, BEFORE, **{**ARGS, "anchor": "if self.fastpath:"})
    assert result.status is Status.MISSING
    assert "if self.fast_path:" in result.candidates


def test_two_matching_ifs_are_ambiguous() -> None:
    source = BEFORE.replace('        return "ok"', '        if self.fast_path:\n            pass\n        return "ok"')
    assert_not_applied(ExtendConditionOp, source, Status.AMBIGUOUS, **ARGS)


def test_already_extended_is_present() -> None:
    assert_not_applied(ExtendConditionOp, AFTER, Status.PRESENT, **ARGS)


def test_patch_inserted_blocks_are_not_anchors() -> None:
    """A guarded block an earlier patch inserted (same header) is not the upstream if."""
    source = BEFORE.replace("    def check(self):\n", "    def check(self):\n        # primus: other\n        if self.fast_path:\n            pass\n")
    result = run_op(ExtendConditionOp, source, **ARGS)
    assert result.status is Status.APPLIED and result.count == 1
