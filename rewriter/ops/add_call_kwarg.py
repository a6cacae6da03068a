"""``add_call_kwarg``: pass one more keyword at a matched call, only while the flag is on.

The keyword is added as ``**({"name": value} if <guard> else {})``, so with the flag off the
call receives exactly upstream's arguments.
"""

from __future__ import annotations

import difflib

import libcst as cst

from rewriter.ops.base import FileOp, OpResult, Status, node_code, replace_in, same_code


class _CallFinder(cst.CSTVisitor):
    def __init__(self, module: cst.Module, callee: str) -> None:
        super().__init__()
        self.module, self.callee = module, callee
        self.calls: list[cst.Call] = []
        self.names: set[str] = set()

        self.depth = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        """Enter the target function only, not functions nested in it."""
        self.depth += 1
        return self.depth == 1

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.depth -= 1

    def visit_Call(self, node: cst.Call) -> None:
        name = node_code(self.module, node.func)
        self.names.add(name)
        if same_code(name, self.callee):
            self.calls.append(node)


class _KwargAdder(cst.CSTTransformer):
    def __init__(self, calls: list[cst.Call], extra: cst.Arg) -> None:
        super().__init__()
        self.ids = {id(c) for c in calls}
        self.extra = extra

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        if id(original) not in self.ids:
            return updated
        args = list(updated.args)
        if not args:
            return updated.with_changes(args=[self.extra])
        last = args[-1]
        # keep the call's layout: the last argument takes the separator used between earlier
        # arguments (with its own end-of-line comment, not theirs), and the new argument takes
        # the last one's trailing comma and the whitespace before ``)``
        sep = args[-2].comma if len(args) > 1 else cst.MaybeSentinel.DEFAULT
        if not isinstance(sep, cst.Comma):
            sep = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        if isinstance(sep.whitespace_after, cst.ParenthesizedWhitespace):
            sep = sep.with_changes(whitespace_after=sep.whitespace_after.with_changes(first_line=_line_end(last.comma)))
        trailing = last.comma
        if isinstance(trailing, cst.Comma) and isinstance(trailing.whitespace_after, cst.ParenthesizedWhitespace):
            trailing = trailing.with_changes(
                whitespace_after=trailing.whitespace_after.with_changes(first_line=cst.TrailingWhitespace())
            )
        args[-1] = last.with_changes(comma=sep, whitespace_after_arg=cst.SimpleWhitespace(""))
        args.append(self.extra.with_changes(comma=trailing, whitespace_after_arg=last.whitespace_after_arg))
        return updated.with_changes(args=args)


def _line_end(comma: cst.Comma | cst.MaybeSentinel) -> cst.TrailingWhitespace:
    """The end of the line after an argument's comma, with its comment if it has one."""
    if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
        return comma.whitespace_after.first_line
    return cst.TrailingWhitespace()


def find_calls(
    op: FileOp, module: cst.Module, target: cst.CSTNode, passing: str | None = None
) -> tuple[list[cst.Call], OpResult | None]:
    """The calls to ``op.edit.args['call']`` in the target (only those passing keyword
    ``passing``, if given), or the drift result if they are not exactly ``expect``."""
    callee = op.edit.args["call"]
    finder = _CallFinder(module, callee)
    target.visit(finder)
    calls = [c for c in finder.calls if passing is None or any(
        a.keyword is not None and a.keyword.value == passing for a in c.args)]
    near = tuple(difflib.get_close_matches(callee, sorted(finder.names), n=3, cutoff=0.5))
    what = f"call to {callee}" + (f" passing {passing}=" if passing else "")
    drift = op.count_result(module, len(calls), what, near)
    if drift is not None and passing and not calls and finder.calls:
        drift = OpResult(drift.status, module, 0, drift.message + " (add_call_kwarg adds a keyword)", near)
    return calls, drift


class AddCallKwargOp(FileOp):
    KIND = "add_call_kwarg"

    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        keyword, value = self.edit.args["keyword"], self.edit.args["value"]
        calls, drift = find_calls(self, module, target)
        if drift is not None:
            return drift
        expr = f"({{{keyword!r}: {value}}} if {self.edit.guard} else {{}})"
        have = [c for c in calls if any(
            (a.keyword is not None and a.keyword.value == keyword)
            or (a.star == "**" and same_code(node_code(module, a.value), expr))
            for a in c.args)]
        if len(have) == len(calls):
            return OpResult(Status.PRESENT, module, len(have))
        if have:
            return OpResult(Status.AMBIGUOUS, module, len(have), f"{keyword}= already passed at {len(have)} of {len(calls)} calls")
        extra = cst.Arg(value=cst.parse_expression(expr), star="**")
        new_target = target.visit(_KwargAdder(calls, extra))
        return OpResult(Status.APPLIED, replace_in(module, target, new_target), len(calls))
