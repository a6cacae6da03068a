"""``override_call_kwarg``: behind its flag, pass another value for a keyword a call already has.

``f(…, v_channels=self.config.v_head_dim)`` becomes
``f(…, v_channels=(self.q_head_dim if <guard> else self.config.v_head_dim))``: with the flag off
the call receives upstream's own expression, evaluated as before.
"""

from __future__ import annotations

import libcst as cst

from rewriter.ops.add_call_kwarg import find_calls
from rewriter.ops.base import FileOp, OpResult, Status, node_code, replace_in, same_code


class _Override(cst.CSTTransformer):
    def __init__(self, calls: list[cst.Call], keyword: str, value: str, guard: str) -> None:
        super().__init__()
        self.ids = {id(c) for c in calls}
        self.keyword, self.value, self.guard = keyword, value, guard
        self.module = cst.Module(body=[])

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        if id(original) not in self.ids:
            return updated
        args = []
        for arg in updated.args:
            if arg.keyword is not None and arg.keyword.value == self.keyword:
                upstream = self.module.code_for_node(arg.value)
                arg = arg.with_changes(value=cst.parse_expression(f"({self.value} if {self.guard} else {upstream})"))
            args.append(arg)
        return updated.with_changes(args=args)


class OverrideCallKwargOp(FileOp):
    KIND = "override_call_kwarg"

    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        keyword, value = self.edit.args["keyword"], self.edit.args["value"]
        calls, drift = find_calls(self, module, target, passing=keyword)
        if drift is not None:
            return drift
        current = [next(a for a in c.args if a.keyword is not None and a.keyword.value == keyword) for c in calls]
        done = [a for a in current if isinstance(a.value, cst.IfExp)
                and same_code(node_code(module, a.value.body), value) and same_code(node_code(module, a.value.test), self.edit.guard or "")]
        if len(done) == len(current):
            return OpResult(Status.PRESENT, module, len(done))
        if done:
            return OpResult(Status.AMBIGUOUS, module, len(done), f"{keyword}= already overridden at {len(done)} of {len(current)} calls")
        new_target = target.visit(_Override(calls, keyword, value, self.edit.guard or ""))
        return OpResult(Status.APPLIED, replace_in(module, target, new_target), len(calls))
