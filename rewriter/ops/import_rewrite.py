"""The libcst half of ``import_module``: rewrite an imported module's imports (see
:mod:`rewriter.ops.import_module` for the rules)."""

from __future__ import annotations

from typing import Any

import libcst as cst

from rewriter.ops.dotted import module_name


class Missing(Exception):
    """Something the edit names is not in the imported source."""


def rewrite_imports(
    text: str,
    *,
    source: str,
    moves: dict[str, str],
    redirects: dict[str, str],
    use_pinned: list[str],
    header: str = "",
) -> str:
    """The imported module's text: imports rewritten, ``use_pinned`` definitions replaced."""
    module = cst.parse_module(text)
    own = module_name(source)
    package = own if source.endswith("__init__.py") else own.rsplit(".", 1)[0]
    rewriter = ImportRewriter(package, moves, redirects)
    module = module.visit(rewriter)
    unused = sorted(set(redirects) - rewriter.redirected)
    if unused:
        raise Missing(f"imports: {', '.join(unused)} not imported by {source}")
    if use_pinned:
        module = _use_pinned(module, own, use_pinned, source)
    if header:
        lines = [cst.EmptyLine(comment=cst.Comment(line)) for line in header.splitlines() if line]
        module = module.with_changes(header=[*module.header, *lines])
    return module.code


def _dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    raise Missing(f"unexpected import target {cst.Module([]).code_for_node(node)!r}")


def _absolute(package: str, level: int, module: str | None) -> str:
    parts = package.split(".")
    if level > len(parts):
        raise Missing(f"relative import beyond the top-level package ({'.' * level}{module or ''})")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


class ImportRewriter(cst.CSTTransformer):
    """Rewrites every import of one module: redirects first, then moved modules."""

    def __init__(self, package: str, moves: dict[str, str], redirects: dict[str, str]) -> None:
        super().__init__()
        self.package, self.moves, self.redirects = package, moves, redirects
        self.redirected: set[str] = set()

    def leave_SimpleStatementLine(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement]:
        if len(updated.body) != 1 or not isinstance(updated.body[0], cst.ImportFrom):
            return updated
        node = updated.body[0]
        groups = self._groups(node)
        if groups is None:
            return updated
        lines: list[cst.BaseStatement] = []
        for n, (target, names) in enumerate(groups):
            module = cst.parse_expression(target)
            assert isinstance(module, (cst.Name, cst.Attribute))
            if n == 0:  # the original statement keeps its layout, comments and first group
                new = node.with_changes(module=module, relative=[], names=names)
                lines.append(updated.with_changes(body=[new]))
            else:
                aliases = [a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in names]
                lines.append(cst.SimpleStatementLine(body=[cst.ImportFrom(module=module, names=aliases)]))
        return cst.FlattenSentinel(lines) if len(lines) > 1 else lines[0]

    def _groups(self, node: cst.ImportFrom) -> list[tuple[str, Any]] | None:
        """(module, names) per target module, in first-use order; None when nothing changes."""
        level = len(node.relative)
        written = _dotted(node.module) if node.module is not None else None
        base = _absolute(self.package, level, written) if level else written
        assert base is not None
        if isinstance(node.names, cst.ImportStar):
            if base in self.moves:
                return [(self.moves[base], node.names)]
            return [(base, node.names)] if level else None
        groups: dict[str, list[cst.ImportAlias]] = {}
        changed = bool(level)
        for alias in node.names:
            name = _dotted(alias.name)
            full = f"{base}.{name}"
            if full in self.redirects:
                self.redirected.add(full)
                target, leaf = self.redirects[full].rsplit(".", 1)
                changed = True
            elif full in self.moves:
                target, leaf = self.moves[full].rsplit(".", 1)
                changed = True
            elif base in self.moves:
                target, leaf = self.moves[base], name
                changed = True
            else:
                target, leaf = base, name
            if leaf != name:  # imported under another name: keep the name the module uses
                alias = alias.with_changes(name=cst.Name(leaf), asname=alias.asname or cst.AsName(name=cst.Name(name)))
            groups.setdefault(target, []).append(alias)
        if not changed:
            return None
        out = list(groups.items())
        if len(out) > 1 and not node.lpar:  # unparenthesised: the first group's last name loses its comma
            first = out[0][1]
            first[-1] = first[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return out

    def leave_Import(self, original: cst.Import, updated: cst.Import) -> cst.Import:
        names = []
        for alias in updated.names:
            name = _dotted(alias.name)
            if name in self.moves:
                if alias.asname is None:
                    raise Missing(f"`import {name}` binds {name.split('.')[0]!r}; a moved module needs `import … as` or `from … import`")
                new = cst.parse_expression(self.moves[name])
                assert isinstance(new, (cst.Name, cst.Attribute))
                alias = alias.with_changes(name=new)
            names.append(alias)
        return updated.with_changes(names=names)


def _use_pinned(module: cst.Module, pinned_module: str, names: list[str], source: str) -> cst.Module:
    """Replace each named top-level definition by an import of the pinned upstream's."""
    found: set[str] = set()
    body: list[cst.BaseStatement] = []
    for stmt in module.body:
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)) and stmt.name.value in names:
            found.add(stmt.name.value)
            line = cst.parse_statement(
                f"from {pinned_module} import {stmt.name.value}  # primus: the pinned upstream's definition\n"
            )
            body.append(line.with_changes(leading_lines=stmt.leading_lines))
        else:
            body.append(stmt)
    missing = [n for n in names if n not in found]
    if missing:
        raise Missing(f"use_pinned: {', '.join(missing)} not defined at the top level of {source}")
    return module.with_changes(body=body)
