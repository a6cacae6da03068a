"""``insert_statements``: flag-guarded statements at a chosen place in a function."""

from __future__ import annotations

import difflib

import libcst as cst

from rewriter.ops.base import (
    FileOp,
    OpResult,
    Site,
    Status,
    docstring_offset,
    guarded_block,
    insert_at_sites,
    is_marked,
    node_code,
    same_code,
)


def statement_sites(body: cst.IndentedBlock) -> list[tuple[cst.IndentedBlock, int, cst.BaseStatement]]:
    """Every statement of a function body with its block and index.

    Nested functions and classes, and statements that patches inserted, are not entered: their
    returns and statements are not the target function's own. (Patch-inserted statements are
    listed, for the idempotence checks; anchors skip them.)
    """
    out: list[tuple[cst.IndentedBlock, int, cst.BaseStatement]] = []

    def walk(block: cst.IndentedBlock) -> None:
        for i, stmt in enumerate(block.body):
            out.append((block, i, stmt))
            if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)) or is_marked(stmt):
                continue
            for child in _child_blocks(stmt):
                walk(child)

    walk(body)
    return out


def _child_blocks(node: cst.CSTNode) -> list[cst.IndentedBlock]:
    blocks: list[cst.IndentedBlock] = []
    for child in node.children:
        if isinstance(child, cst.IndentedBlock):
            blocks.append(child)
        elif isinstance(child, (cst.If, cst.Else, cst.ExceptHandler, cst.Finally, cst.ExceptStarHandler)):
            blocks.extend(_child_blocks(child))
    return blocks


_PASS_BLOCK = cst.IndentedBlock(body=[cst.SimpleStatementLine(body=[cst.Pass()])])


def matches_anchor(module: cst.Module, stmt: cst.BaseStatement, anchor: str) -> bool:
    """Does ``stmt`` equal the anchor, compared as Python?

    A simple statement is compared whole. An anchor ending in ``:`` is the header of a compound
    statement (``if x and y:``, ``for a in b:``, ``with c:``), compared with the statement's header
    only; an ``if`` anchor does not match an ``elif``.
    """
    header = anchor.strip()
    if header.endswith(":"):
        if not isinstance(stmt, (cst.If, cst.For, cst.While, cst.With)):
            return False
        bare = stmt.with_changes(body=_PASS_BLOCK, leading_lines=[])
        if isinstance(bare, (cst.If, cst.For, cst.While)):
            bare = bare.with_changes(orelse=None)
        return same_code(node_code(module, bare), header + "\n    pass\n")
    return isinstance(stmt, cst.SimpleStatementLine) and same_code(node_code(module, stmt), anchor)


def _has_return(stmt: cst.BaseStatement) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and any(isinstance(s, cst.Return) for s in stmt.body)


def _inline_return(stmt: cst.BaseStatement) -> bool:
    """``if x: return y`` and the like: a return in a one-line suite of a compound statement."""
    suites: list[cst.CSTNode] = [stmt]
    while suites:
        node = suites.pop()
        for child in node.children:
            if isinstance(child, cst.SimpleStatementSuite) and any(isinstance(s, cst.Return) for s in child.body):
                return True
            if isinstance(child, (cst.If, cst.Else)):
                suites.append(child)
    return False


class InsertStatementsOp(FileOp):
    KIND = "insert_statements"

    def apply_impl(self, module: cst.Module, target: cst.CSTNode) -> OpResult:
        where = self.edit.args["where"]
        body = self.body_of(module, target)
        if isinstance(body, OpResult):
            return body
        sites, drift = self._sites(module, body, where)
        if drift is not None:
            return drift
        stmt = guarded_block(self.patch_id, self.flag_names, self.edit.guard or "", self.edit.code or "")
        status, new_module, message = insert_at_sites(module, target, sites, stmt)
        return OpResult(status, new_module, len(sites), message)

    def _sites(self, module: cst.Module, body: cst.IndentedBlock, where: str) -> tuple[list[Site], OpResult | None]:
        if where == "start":
            return [Site(body, docstring_offset(body), "forward")], None
        if where == "end":
            last = body.body[-1]
            while is_marked(last) and len(body.body) > 1:
                last = body.body[body.body.index(last) - 1]
            if _has_return(last) or (isinstance(last, cst.SimpleStatementLine) and any(isinstance(s, cst.Raise) for s in last.body)):
                return [], OpResult(Status.MISSING, module, 0,
                                    f"{self.edit.target} ends with return/raise; use where: before_return")
            return [Site(body, len(body.body), "backward")], None
        everything = statement_sites(body)
        if where == "before_return":
            inline = [s for _, _, s in everything if _inline_return(s)]
            if inline:
                code = node_code(module, inline[0]).strip().splitlines()[-1].strip()
                return [], OpResult(Status.MISSING, module, 0,
                                    f"{self.edit.target} returns from a one-line suite ({code!r}); statements cannot "
                                    "be inserted before that return without reformatting upstream: anchor elsewhere")
            found = [Site(b, i, "backward") for b, i, s in everything if _has_return(s)]
            drift = self.count_result(module, len(found), "return statement")
            return found, drift
        anchor = self.edit.args["anchor"]
        matched = [(b, i) for b, i, s in everything if not is_marked(s) and matches_anchor(module, s, anchor)]
        if where == "before":
            found = [Site(b, i, "backward") for b, i in matched]
        else:
            found = [Site(b, i + 1, "forward") for b, i in matched]
        candidates = near_statements(module, everything, anchor)
        return found, self.count_result(module, len(found), f"anchor {anchor.strip()!r}", candidates)


def near_statements(module: cst.Module, sites: list[tuple[cst.IndentedBlock, int, cst.BaseStatement]], anchor: str) -> tuple[str, ...]:
    """The simple statements of the function that look most like the anchor."""
    lines = [node_code(module, s).strip() if isinstance(s, cst.SimpleStatementLine)
             else node_code(module, s).strip().splitlines()[0] for _, _, s in sites]
    lines = [ln.splitlines()[-1] if ln.startswith("#") else ln for ln in lines]
    return tuple(difflib.get_close_matches(anchor.strip(), lines, n=3, cutoff=0.4))
