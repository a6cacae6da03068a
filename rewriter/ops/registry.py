"""Map each file-editing ``op:`` name to its implementation (imports libcst)."""

from __future__ import annotations

from rewriter.ops.add_call_kwarg import AddCallKwargOp
from rewriter.ops.add_config_field import AddConfigFieldOp
from rewriter.ops.base import FileOp
from rewriter.ops.catalog import CATALOG
from rewriter.ops.extend_condition import ExtendConditionOp
from rewriter.ops.insert_statements import InsertStatementsOp
from rewriter.ops.override_call_kwarg import OverrideCallKwargOp
from rewriter.ops.route_function import RouteFunctionOp

FILE_OPS: dict[str, type[FileOp]] = {
    op.KIND: op for op in (AddConfigFieldOp, InsertStatementsOp, RouteFunctionOp, AddCallKwargOp, OverrideCallKwargOp,
                           ExtendConditionOp)
}
if set(FILE_OPS) | {"add_module", "import_module"} != set(CATALOG):  # pragma: no cover - a programming error
    raise ImportError("every operation in rewriter.ops.catalog needs an implementation")
