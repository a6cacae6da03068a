"""What every file-editing operation shares: target lookup, guarded blocks, result values.

An operation never prints and never raises for drift: it returns an :class:`OpResult` whose
status says what happened, and the engine decides whether that stops the build (as libcst's
codemods return ``TransformResult`` values instead of raising).
"""

from __future__ import annotations

import ast
import difflib
import enum
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import libcst as cst

from rewriter.errors import ApplyError
from rewriter.patchset.model import Edit, Flag

MARKER = "# primus:"


class Status(str, enum.Enum):
    """How one edit went. Only APPLIED and PRESENT let a build continue."""

    APPLIED = "applied"
    PRESENT = "already-present"  # upstream (or an earlier pass) already has exactly this
    MISSING = "anchor-missing"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class OpResult:
    status: Status
    module: cst.Module
    count: int = 0
    message: str = ""
    candidates: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Site:
    """Insert before ``index`` in ``block``; ``look`` says where an earlier insertion would be."""

    block: cst.IndentedBlock
    index: int
    look: str  # "forward" (start/after) or "backward" (before/before_return/end)


def replace_in(module: cst.Module, old: cst.CSTNode,
               new: cst.CSTNode | cst.RemovalSentinel | cst.FlattenSentinel[cst.CSTNode]) -> cst.Module:
    """``module`` with ``old`` replaced by ``new``, the result of visiting ``old`` with a transformer.

    libcst types a visit's result and ``deep_replace``'s as any node or sentinel; the operations'
    transformers always return one node and a module stays a module, which this checks.
    """
    if not isinstance(new, cst.CSTNode):  # pragma: no cover - the operations' transformers never remove
        raise TypeError(f"a transformer turned {type(old).__name__} into {type(new).__name__}")
    replaced = module.deep_replace(old, new)
    if not isinstance(replaced, cst.Module):  # pragma: no cover - replacing inside a module gives a module
        raise TypeError(f"replacing a node inside a module gave {type(replaced).__name__}")
    return replaced


def qualnames(module: cst.Module) -> Iterator[tuple[str, cst.CSTNode]]:
    """Every class and function definition reachable without entering a function body.

    Definitions inside module- or class-level ``if``/``try``/``with`` blocks count too (as in
    ``if HAVE_TE: class TELinear…``), so a target defined twice is reported as ambiguous.
    """

    def walk(stmts: Sequence[cst.BaseStatement], prefix: str) -> Iterator[tuple[str, cst.CSTNode]]:
        for stmt in stmts:
            if isinstance(stmt, (cst.ClassDef, cst.FunctionDef)):
                name = prefix + stmt.name.value
                yield name, stmt
                if isinstance(stmt, cst.ClassDef) and isinstance(stmt.body, cst.IndentedBlock):
                    yield from walk(stmt.body.body, name + ".")
            elif isinstance(stmt, (cst.If, cst.Try, cst.With, cst.For, cst.While)):
                for block in _blocks_of(stmt):
                    yield from walk(block.body, prefix)

    yield from walk(module.body, "")


def _blocks_of(stmt: cst.CSTNode) -> Iterator[cst.IndentedBlock]:
    for child in stmt.children:
        if isinstance(child, cst.IndentedBlock):
            yield child
        elif isinstance(child, (cst.If, cst.Else, cst.ExceptHandler, cst.Finally)):
            yield from _blocks_of(child)


def node_code(module: cst.Module, node: cst.CSTNode) -> str:
    return module.code_for_node(node)


def same_code(a: str, b: str) -> bool:
    """True when two snippets are the same Python, ignoring layout and comments."""
    try:
        return ast.dump(ast.parse(textwrap.dedent(a))) == ast.dump(ast.parse(textwrap.dedent(b)))
    except SyntaxError:
        return False


def is_marked(stmt: cst.CSTNode) -> bool:
    """Was this statement inserted by a patch (it carries our marker comment)?"""
    lines = getattr(stmt, "leading_lines", ())
    return any(line.comment is not None and line.comment.value.startswith(MARKER) for line in lines)


def marker_comment(patch_id: str, flags: tuple[str, ...]) -> cst.Comment:
    """``# primus: <patch> [flag …]``: tells a reader (and a second pass) which patch wrote this."""
    named = "" if flags == (patch_id,) else f" (flag {', '.join(flags)})"
    return cst.Comment(f"{MARKER} {patch_id}{named}")


def guarded_block(patch_id: str, flags: tuple[str, ...], guard: str, code: str) -> cst.If:
    """``if <guard>:`` around ``code``, with a marker comment naming the patch and its flags."""
    body = textwrap.indent(code.strip("\n") + "\n", "    ")
    try:
        stmt = cst.parse_statement(f"if {guard}:\n{body}")
    except cst.ParserSyntaxError as exc:
        raise ApplyError(f"patch {patch_id}: guarded code does not parse: {exc}") from exc
    assert isinstance(stmt, cst.If)
    return stmt.with_changes(leading_lines=[cst.EmptyLine(comment=marker_comment(patch_id, flags))])


def marked_statement(patch_id: str, flags: tuple[str, ...], code: str) -> cst.BaseStatement:
    """An unguarded statement with the marker comment (used for config validation)."""
    stmt = cst.parse_statement(textwrap.dedent(code))
    return stmt.with_changes(leading_lines=[cst.EmptyLine(comment=marker_comment(patch_id, flags))])


def docstring_offset(block: cst.IndentedBlock) -> int:
    """Index of the first statement after a leading docstring."""
    if block.body and isinstance(block.body[0], cst.SimpleStatementLine):
        first = block.body[0].body
        if len(first) == 1 and isinstance(first[0], cst.Expr) and isinstance(first[0].value, (cst.SimpleString, cst.ConcatenatedString)):
            return 1
    return 0


class _SiteInserter(cst.CSTTransformer):
    """Insert one statement at each site, keyed by the identity of the original block."""

    def __init__(self, sites: list[Site], stmt: cst.BaseStatement) -> None:
        super().__init__()
        self.by_block: dict[int, list[int]] = {}
        for site in sites:
            self.by_block.setdefault(id(site.block), []).append(site.index)
        self.stmt = stmt

    def leave_IndentedBlock(self, original: cst.IndentedBlock, updated: cst.IndentedBlock) -> cst.IndentedBlock:
        indices = self.by_block.get(id(original))
        if not indices:
            return updated
        body = list(updated.body)
        for index in sorted(indices, reverse=True):
            body.insert(index, self.stmt)
        return updated.with_changes(body=body)


def insert_at_sites(
    module: cst.Module, func: cst.CSTNode, sites: list[Site], stmt: cst.BaseStatement
) -> tuple[Status, cst.Module, str]:
    """Insert ``stmt`` at every site, or report it already present at all of them.

    A site counts as done when ``stmt`` is among the patch-inserted statements adjacent to it, so
    a second pass changes nothing even when several patches insert at the same place. New
    insertions go after earlier patches' statements, so the file reads in series order.
    """
    wanted = node_code(module, stmt)
    present, adjusted = 0, []
    for site in sites:
        body = site.block.body
        step, i = (1, site.index) if site.look == "forward" else (-1, site.index - 1)
        found = False
        while 0 <= i < len(body) and is_marked(body[i]):
            if same_code(node_code(module, body[i]), wanted):
                found = True
            i += step
        if found:
            present += 1
        # forward sites insert after the run of earlier insertions; backward ones already do
        adjusted.append(Site(site.block, i if site.look == "forward" else site.index, site.look))
    if present == len(sites):
        return Status.PRESENT, module, ""
    if present:
        return Status.AMBIGUOUS, module, f"already present at {present} of {len(sites)} sites"
    new_func = func.visit(_SiteInserter(adjusted, stmt))
    return Status.APPLIED, replace_in(module, func, new_func), ""


class FileOp(ABC):
    """An operation on one parsed file. Subclasses implement :meth:`apply_impl` only."""

    KIND: ClassVar[str]

    def __init__(self, edit: Edit, patch_id: str, flags: tuple[Flag, ...]) -> None:
        self.edit = edit
        self.patch_id = patch_id
        self.flags = flags

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.flags)

    def apply(self, module: cst.Module) -> OpResult:
        """Find the edit's target, then let the subclass edit it."""
        target = self.edit.target
        assert target is not None
        names = list(qualnames(module))
        matches = [node for name, node in names if name == target]
        if not matches:
            close = difflib.get_close_matches(target, sorted({n for n, _ in names}), n=3, cutoff=0.5)
            return OpResult(Status.MISSING, module, 0, f"target {target!r} not found", tuple(close))
        if len(matches) > 1:
            return OpResult(Status.AMBIGUOUS, module, len(matches), f"target {target!r} is defined {len(matches)} times")
        return self.apply_impl(module, matches[0])

    @abstractmethod
    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        """Edit ``target`` (the unique definition named by the edit) inside ``module``."""

    def body_of(self, module: cst.Module, target: cst.CSTNode) -> cst.IndentedBlock | OpResult:
        """The target function's indented body, or the MISSING result saying why there is none."""
        if not isinstance(target, cst.FunctionDef):
            return OpResult(Status.MISSING, module, 0, f"{self.edit.target!r} is not a function")
        if not isinstance(target.body, cst.IndentedBlock):
            return OpResult(Status.MISSING, module, 0,
                            f"{self.edit.target!r} is a one-line function; there is no block to insert into")
        return target.body

    def count_result(self, module: cst.Module, found: int, what: str, candidates: tuple[str, ...] = ()) -> OpResult | None:
        """The drift result when ``found`` differs from the declared count, else None."""
        if found == 0:
            return OpResult(Status.MISSING, module, 0, f"{what} not found in {self.edit.target}", candidates)
        if found != self.edit.expect:
            return OpResult(
                Status.AMBIGUOUS, module, found,
                f"{what} matches {found} times in {self.edit.target}, patch expects {self.edit.expect}",
                candidates,
            )
        return None
