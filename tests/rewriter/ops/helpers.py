"""Helpers for the operation tests, in the spirit of libcst's ``CodemodTest``.

A test writes the upstream source and the expected result as dedented triple-quoted strings and
calls :func:`assert_op`, which applies the operation once (it must report APPLIED and produce
exactly ``after``) and then again to the re-parsed output, as the engine's verification pass
does (it must report PRESENT and change nothing).
"""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libcst as cst

from rewriter.ops.base import FileOp, OpResult, Status
from rewriter.patchset.model import Edit, Flag, Patch

#: the patch id used unless a test names another; the default flag has the same name, so the
#: marker comment reads ``# primus: fast_path``
PATCH = "fast_path"


def make_flag(
    name: str = PATCH,
    type: str = "bool",
    default: Any = False,
    *,
    version: str = "v0.1.0",
    description: str = "Use the fast path.",
    notes: str = "",
    table: str = "module",
    origin: str = "primus",
    choices: tuple[Any, ...] = (),
    nullable: bool = False,
) -> Flag:
    """A :class:`Flag` with test defaults for everything not given."""
    return Flag(
        name=name,
        type=type,
        default=default,
        version=version,
        description=description,
        notes=notes,
        table=table,
        origin=origin,
        choices=tuple(choices),
        nullable=nullable,
    )


def make_edit(
    op: str = "insert_statements",
    *,
    file: str = "megatron/core/module.py",
    target: str | None = "f",
    args: dict[str, Any] | None = None,
    expect: int = 1,
    guard: str | None = None,
    code: str | None = None,
    template: str | None = None,
    source: str = "patch.yaml:1",
    **more_args: Any,
) -> Edit:
    """An :class:`Edit`; op-specific arguments may be given as keywords (``where=…``)."""
    return Edit(
        op=op,
        file=file,
        target=target,
        args={**(args or {}), **more_args},
        expect=expect,
        guard=guard,
        code=textwrap.dedent(code) if code is not None else None,
        template=template,
        source=source,
    )


def make_patch(patch_id: str, edits: Sequence[Edit], flags: Sequence[Flag] | None = None) -> Patch:
    """A core :class:`Patch` (for tests that go through the engine)."""
    return Patch(
        id=patch_id,
        summary=f"test patch {patch_id}",
        version="v0.1.0",
        implemented_in="core",
        upstream_status="absent",
        upstream_note="",
        flags=tuple(flags) if flags is not None else (make_flag(patch_id),),
        edits=tuple(edits),
        path=Path("patchsets/v0.1.0") / patch_id,
        content_hash="0" * 64,
    )


def parse(source: str | cst.Module) -> cst.Module:
    """Parse dedented ``source`` (a module passes through unchanged)."""
    return source if isinstance(source, cst.Module) else cst.parse_module(textwrap.dedent(source))


def run_op(
    op_cls: type[FileOp],
    source: str | cst.Module,
    *,
    patch_id: str = PATCH,
    flags: Sequence[Flag] | None = None,
    **edit_kwargs: Any,
) -> OpResult:
    """Apply one ``op_cls`` edit to ``source`` and return its result, whatever the status."""
    edit = make_edit(op_cls.KIND, **edit_kwargs)
    flag_tuple = tuple(flags) if flags is not None else (make_flag(patch_id),)
    return op_cls(edit, patch_id, flag_tuple).apply(parse(source))


def _describe(result: OpResult) -> str:
    return f"status={result.status.value} count={result.count} message={result.message!r} candidates={result.candidates!r}"


def assert_op(op_cls: type[FileOp], before: str, after: str, **edit_kwargs: Any) -> str:
    """Apply the edit: APPLIED with exactly ``after``; then again: PRESENT, text unchanged.

    Returns the patched text, so a test can go on to execute it.
    """
    result = run_op(op_cls, before, **edit_kwargs)
    assert result.status is Status.APPLIED, _describe(result)
    expected = textwrap.dedent(after)
    assert result.module.code == expected
    again = run_op(op_cls, cst.parse_module(result.module.code), **edit_kwargs)
    assert again.status is Status.PRESENT, "second application: " + _describe(again)
    assert again.module.code == expected, "second application changed the text"
    return result.module.code


def assert_not_applied(op_cls: type[FileOp], before: str, status: Status, **edit_kwargs: Any) -> OpResult:
    """Apply the edit: it must report ``status`` and leave the module exactly as it was."""
    module = parse(before)
    result = run_op(op_cls, module, **edit_kwargs)
    assert result.status is status, _describe(result)
    assert result.module.code == module.code, "an edit that did not apply changed the text"
    return result


def apply_in_series(before: str, steps: Sequence[tuple[type[FileOp], dict[str, Any]]]) -> str:
    """Apply several edits in order (each APPLIED), then all of them again to the re-parsed
    output (each PRESENT, nothing changed), as the engine does for one file. Returns the text."""
    module = parse(before)
    for op_cls, kwargs in steps:
        result = run_op(op_cls, module, **kwargs)
        assert result.status is Status.APPLIED, _describe(result)
        module = result.module
    text = module.code
    module = cst.parse_module(text)
    for op_cls, kwargs in steps:
        result = run_op(op_cls, module, **kwargs)
        assert result.status is Status.PRESENT, "second pass: " + _describe(result)
        module = result.module
    assert module.code == text, "the second pass changed the text"
    return text


def load(text: str, **namespace: Any) -> dict[str, Any]:
    """Execute patched module text with ``namespace`` among its globals and return them.

    The code runs as a real (briefly registered) module, because ``@dataclass`` looks its
    class's module up in ``sys.modules``.
    """
    name = "rewriter_test_patched"
    module = types.ModuleType(name)
    module.__dict__.update(namespace)
    sys.modules[name] = module
    try:
        exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module.__dict__
