"""``add_config_field``: a flag becomes a field of a config dataclass.

The field goes after the class's last field with its description as the attribute docstring
(megatron's own convention), and ``__post_init__`` gains a type (and choices) check, so a bad
value fails where upstream options fail. If the class already has the field, upstream has the
feature: the edit reports itself present and the patch can be retired.
"""

from __future__ import annotations

import libcst as cst

from rewriter.ops.base import (
    FileOp,
    OpResult,
    Status,
    docstring_offset,
    is_marked,
    marked_statement,
    marker_comment,
    replace_in,
)
from rewriter.patchset.model import Flag

_PY_TYPES = {"bool": "bool", "int": "int", "float": "float", "str": "str", "list[int]": "list[int]",
             "list[str]": "list[str]"}


def field_lines(flag: Flag) -> str:
    if flag.type not in _PY_TYPES:
        raise ValueError(f"flag {flag.name!r}: add_config_field supports {', '.join(_PY_TYPES)}, not {flag.type}")
    annotation = _PY_TYPES[flag.type] + (" | None" if flag.nullable else "")
    # the docstring's value is the description: backslashes are escaped, a triple quote becomes
    # ''', and a final " is escaped so that it does not run into the closing quotes
    doc = flag.description.replace("\\", "\\\\").replace('"""', "'''")
    if doc.endswith('"'):
        doc = doc[:-1] + '\\"'
    return f'{flag.name}: {annotation} = {flag.default!r}\n"""{doc}"""\n'


def validation_code(flag: Flag, class_name: str) -> str:
    """The ``__post_init__`` check for one field, one ``if``/``elif`` statement: type, then choices."""
    if flag.type.startswith("list["):
        return _list_validation(flag, class_name)
    types = ["int", "float"] if flag.type == "float" else [_PY_TYPES[flag.type]]
    if flag.nullable:
        types.append("type(None)")
    allowed = types[0] if len(types) == 1 else f"({', '.join(types)})"
    bad_type = f"not isinstance(self.{flag.name}, {allowed})"
    if flag.type in ("int", "float"):
        bad_type += f" or isinstance(self.{flag.name}, bool)"
    lines = [
        f"if {bad_type}:",
        f"    raise TypeError(f\"{class_name}.{flag.name} must be {flag.type}"
        f"{' or None' if flag.nullable else ''}, got {{self.{flag.name}!r}}\")",
    ]
    if flag.choices:
        lines += [
            f"elif self.{flag.name} not in {tuple(flag.choices)!r}:",
            f"    raise ValueError(f\"{class_name}.{flag.name} must be one of {', '.join(map(str, flag.choices))}, "
            f"got {{self.{flag.name}!r}}\")",
        ]
    return "\n".join(lines) + "\n"


def _list_validation(flag: Flag, class_name: str) -> str:
    """A list field: a list whose every item has the element type (``bool`` is no ``int``), or None."""
    item = flag.type[len("list["):-1]
    bad_item = f"not isinstance(v, {item})" + (" or isinstance(v, bool)" if item == "int" else "")
    ok = f"isinstance(self.{flag.name}, list) and not any({bad_item} for v in self.{flag.name})"
    if flag.nullable:
        ok = f"self.{flag.name} is None or ({ok})"
    return (
        f"if not ({ok}):\n"
        f"    raise TypeError(f\"{class_name}.{flag.name} must be {flag.type}"
        f"{' or None' if flag.nullable else ''}, got {{self.{flag.name}!r}}\")\n"
    )


class AddConfigFieldOp(FileOp):
    KIND = "add_config_field"

    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        flag = next(f for f in self.flags if f.name == self.edit.args["flag"])
        if not isinstance(target, cst.ClassDef) or not isinstance(target.body, cst.IndentedBlock):
            return OpResult(Status.MISSING, module, 0, f"{self.edit.target} is not a class with a body")
        body = list(target.body.body)
        fields = [i for i, s in enumerate(body) if _annotated_name(s) is not None]
        if flag.name in {_annotated_name(body[i]) for i in fields}:
            return OpResult(Status.PRESENT, module, 1, f"{self.edit.target} already has field {flag.name!r}")
        post_init = next((s for s in body if isinstance(s, cst.FunctionDef) and s.name.value == "__post_init__"), None)
        if post_init is None or not isinstance(post_init.body, cst.IndentedBlock):
            return OpResult(Status.MISSING, module, 0, f"{self.edit.target} has no __post_init__ to validate the field in")
        check = marked_statement(self.patch_id, (flag.name,), validation_code(flag, target.name.value))
        checks = list(post_init.body.body)
        at_check = docstring_offset(post_init.body)
        while at_check < len(checks) and is_marked(checks[at_check]):
            at_check += 1  # after earlier patches' checks: the file reads in series order
        checks.insert(at_check, check)
        body[body.index(post_init)] = post_init.with_changes(body=post_init.body.with_changes(body=checks))
        at = (fields[-1] + 1) if fields else docstring_offset(target.body)
        if at < len(body) and _is_docstring(body[at]):
            at += 1
        first, *rest = cst.parse_module(field_lines(flag)).body
        marker = cst.EmptyLine(comment=marker_comment(self.patch_id, (flag.name,)))
        body[at:at] = [first.with_changes(leading_lines=[marker]), *rest]
        new_target = target.with_changes(body=target.body.with_changes(body=body))
        return OpResult(Status.APPLIED, replace_in(module, target, new_target), 1)


def _annotated_name(stmt: cst.BaseStatement) -> str | None:
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
        small = stmt.body[0]
        if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
            return small.target.value
    return None


def _is_docstring(stmt: cst.BaseStatement) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )
