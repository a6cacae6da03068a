"""``route_function``: behind its flag, hand a call to a new implementation.

The upstream body is left as it is after the guarded ``return``, so with the flag off the
function runs exactly upstream's code.
"""

from __future__ import annotations

import libcst as cst

from rewriter.ops.base import FileOp, OpResult, Site, docstring_offset, guarded_block, insert_at_sites


def forwarding_call(func: cst.FunctionDef, callee: str) -> str:
    """``callee(...)`` passing every parameter of ``func`` on exactly as it was received."""
    params = func.params
    args = [p.name.value for p in (*params.posonly_params, *params.params)]
    if isinstance(params.star_arg, cst.Param):
        args.append("*" + params.star_arg.name.value)
    args += [f"{p.name.value}={p.name.value}" for p in params.kwonly_params]
    if params.star_kwarg is not None:
        args.append("**" + params.star_kwarg.name.value)
    return f"{callee}({', '.join(args)})"


class _YieldFinder(cst.CSTVisitor):
    """Does a function body yield (outside nested functions, lambdas and classes)?"""

    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def visit_Yield(self, node: cst.Yield) -> None:
        self.found = True

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False


def is_generator(func: cst.FunctionDef) -> bool:
    finder = _YieldFinder()
    func.body.visit(finder)
    return finder.found


def handoff(func: cst.FunctionDef, call: str) -> str:
    """How the routed function hands its call over, keeping what callers get back.

    A plain function returns the new implementation's result; a coroutine awaits it; a generator
    yields from it (a ``return value`` there would end the iteration with nothing).
    """
    if func.asynchronous is not None and is_generator(func):
        return f"async for _primus_item in {call}:\n    yield _primus_item\nreturn\n"
    if func.asynchronous is not None:
        return f"return await {call}\n"
    if is_generator(func):
        return f"return (yield from {call})\n"
    return f"return {call}\n"


class RouteFunctionOp(FileOp):
    KIND = "route_function"

    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        body = self.body_of(module, target)
        if isinstance(body, OpResult):
            return body
        assert isinstance(target, cst.FunctionDef)
        module_name, _, func_name = self.edit.args["to"].partition(":")
        code = f"from {module_name} import {func_name} as _primus_impl\n\n" + handoff(
            target, forwarding_call(target, "_primus_impl")
        )
        stmt = guarded_block(self.patch_id, self.flag_names, self.edit.guard or "", code)
        status, new_module, message = insert_at_sites(module, target, [Site(body, docstring_offset(body), "forward")], stmt)
        return OpResult(status, new_module, 1, message)
