"""``route_function``: behind its flag, hand a call to a new implementation.

The upstream body is left as it is after the guarded ``return``, so with the flag off the
function runs exactly upstream's code.
"""

from __future__ import annotations

import libcst as cst

from rewriter.ops.base import FileOp, OpResult, Site, Status, docstring_offset, guarded_block, insert_at_sites
from rewriter.ops.insert_statements import function_body


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


class RouteFunctionOp(FileOp):
    KIND = "route_function"

    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        try:
            body = function_body(target, repr(self.edit.target))
        except TypeError as exc:
            return OpResult(Status.MISSING, module, 0, str(exc))
        assert isinstance(target, cst.FunctionDef)
        module_name, _, func_name = self.edit.args["to"].partition(":")
        code = (
            f"from {module_name} import {func_name} as _primus_impl\n\n"
            f"return _primus_impl({forwarding_call(target, '').strip('()')})\n"
        )
        stmt = guarded_block(self.patch_id, self.flag_names, self.edit.guard or "", code)
        status, new_module, message = insert_at_sites(module, target, [Site(body, docstring_offset(body), "forward")], stmt)
        return OpResult(status, new_module, 1, message)
