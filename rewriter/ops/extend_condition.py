"""``extend_condition``: behind its flag, an ``if`` also requires one more condition.

``if self.moe_permute_fusion:`` becomes
``if self.moe_permute_fusion and (te_permutation_available() if <guard> else True):``: with the
flag off the extra term is ``True`` and the branch is taken exactly when upstream takes it.
"""

from __future__ import annotations

import libcst as cst

from rewriter.ops.base import FileOp, OpResult, Status, is_marked, node_code, replace_in, same_code
from rewriter.ops.insert_statements import matches_anchor, near_statements, statement_sites


class ExtendConditionOp(FileOp):
    KIND = "extend_condition"

    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        body = self.body_of(module, target)
        if isinstance(body, OpResult):
            return body
        anchor, condition = self.edit.args["anchor"], self.edit.args["condition"]
        extra = cst.parse_expression(f"({condition} if {self.edit.guard} else True)")
        everything = statement_sites(body)
        ifs = [s for _, _, s in everything if isinstance(s, cst.If) and not is_marked(s)]
        matched = [s for s in ifs if matches_anchor(module, s, anchor)]
        extended = [s for s in ifs if _is_extended(module, s, anchor, extra)]
        if extended and not matched:
            if len(extended) == self.edit.expect:
                return OpResult(Status.PRESENT, module, len(extended))
            return OpResult(Status.AMBIGUOUS, module, len(extended), f"extended at {len(extended)} places")
        drift = self.count_result(module, len(matched), f"anchor {anchor.strip()!r}",
                                  near_statements(module, everything, anchor))
        if drift is not None:
            return drift
        if extended:
            return OpResult(Status.AMBIGUOUS, module, len(matched), "already extended at some of the matches")
        new_target = target
        for stmt in matched:
            test = cst.BooleanOperation(left=stmt.test, operator=cst.And(), right=extra)
            new_target = new_target.deep_replace(stmt, stmt.with_changes(test=test))
        return OpResult(Status.APPLIED, replace_in(module, target, new_target), len(matched))


def _is_extended(module: cst.Module, stmt: cst.If, anchor: str, extra: cst.BaseExpression) -> bool:
    """``if <anchor condition> and <extra>:``, as this op writes it."""
    test = stmt.test
    if not (isinstance(test, cst.BooleanOperation) and isinstance(test.operator, cst.And)):
        return False
    if not same_code(node_code(module, test.right), node_code(module, extra)):
        return False
    return matches_anchor(module, stmt.with_changes(test=test.left), anchor)
