"""The cpu-test flavor: route every CUDA call of megatron-core through one device module.

megatron-core assumes CUDA in about a hundred files; a CPU-only torch fails on the first
``torch.cuda.current_device()``. Monkey-patching a few names at test time reaches only what it
knows. This flavor rewrites the source instead, mechanically and everywhere:

* ``torch.cuda.X``           -> ``_primus_cuda.X``
* ``from torch.cuda import`` -> ``from megatron.core._primus.cuda import``
* ``x.cuda(...)``            -> ``_primus_cuda.to_device(x, ...)``
* ``torch.device("cuda", i)`` -> ``_primus_cuda.make_device(i)``
* ``x.is_cuda``              -> ``_primus_cuda.is_on_device(x)``
* the string ``"cuda"``      -> ``_primus_cuda.DEVICE``
* ``"torch.cuda.FloatTensor"`` -> ``_primus_cuda.type_name("torch.cuda.FloatTensor")``

and, so that optional TransformerEngine imports fail the way upstream means them to on hosts
without TE, a module-level ``try: from … import a, b`` whose ``except ImportError`` binds nothing
gets ``a = b = None`` in that handler (upstream 0.16.1's ``moe_utils`` otherwise raises
``NameError: te_general_gemm`` on every MoE router forward without TE).

``_primus_cuda`` is :mod:`rewriter.flavors.payload.cuda`, shipped in the wheel as
``megatron/core/_primus/cuda.py``: ``torch.cuda`` itself where CUDA exists, CPU stand-ins where it
does not. Nothing else changes, so a cpu-test build runs the same megatron code paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import libcst as cst

from rewriter.cache import JsonCache, cache_key

SHIM_MODULE = "megatron.core._primus.cuda"
SHIM_FILE = "megatron/core/_primus/cuda.py"
ALIAS = "_primus_cuda"
PAYLOAD = Path(__file__).parent / "payload" / "cuda.py"


def shim_source() -> str:
    return PAYLOAD.read_text(encoding="utf-8")


def rewrite_tree(
    files: dict[str, str], cache: JsonCache | None = None, progress: Callable[[str], None] = lambda _m: None
) -> dict[str, str]:
    """Return the files (path -> text) that the flavor changes, rewritten.

    Only files that mention ``cuda`` or ``ImportError`` are parsed; results are cached by content, and cache misses
    are parsed in parallel (libcst parsing is the whole cost).
    """
    cache = cache or JsonCache(None)
    candidates = sorted(p for p, t in files.items()
                        if p.endswith(".py") and p != SHIM_FILE and ("cuda" in t or "ImportError" in t))
    keys = {p: cache_key("cpu-test", p, files[p]) for p in candidates}
    results = {p: hit["text"] for p in candidates if isinstance(hit := cache.get(keys[p]), dict) and isinstance(hit.get("text"), str)}
    missing = [p for p in candidates if p not in results]
    progress(f"{len(candidates)} files mention cuda or ImportError, {len(missing)} to parse")
    if missing:
        workers = max(1, min(len(missing), os.cpu_count() or 1))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for path, text in zip(missing, pool.map(rewrite_source, [files[p] for p in missing], chunksize=4)):
                results[path] = text
                cache.put(keys[path], {"text": text})
    return {p: t for p, t in results.items() if t != files[p]}


def rewrite_source(text: str) -> str:
    """Rewrite one module's CUDA uses (see the module docstring); unchanged text if there are none."""
    module = cst.parse_module(text)
    transformer = CudaToShim()
    new = module.visit(transformer)
    if not transformer.changes:
        return text
    return _add_import(new).code


def _add_import(module: cst.Module) -> cst.Module:
    """``from megatron.core._primus import cuda as _primus_cuda`` after the docstring and __future__ imports."""
    body = list(module.body)
    at = 0
    while at < len(body) and _is_header(body[at]):
        at += 1
    stmt = cst.parse_statement(f"from megatron.core._primus import cuda as {ALIAS}  # cpu-test flavor\n")
    body.insert(at, stmt)
    return module.with_changes(body=body)


def _is_header(stmt: cst.BaseStatement) -> bool:
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return False
    small = stmt.body[0]
    if isinstance(small, cst.Expr) and isinstance(small.value, (cst.SimpleString, cst.ConcatenatedString)):
        return True
    return isinstance(small, cst.ImportFrom) and isinstance(small.module, cst.Name) and small.module.value == "__future__"


class CudaToShim(cst.CSTTransformer):
    """The rewrites of the module docstring; counts what it changed."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0
        self.depth = 0  # compound statements entered: the import fallback is module-level only

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.depth += 1
        return True

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        self.depth -= 1
        return updated

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.depth += 1
        return True

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self.depth -= 1
        return updated

    def leave_Try(self, original: cst.Try, updated: cst.Try) -> cst.Try:
        if self.depth or not isinstance(updated.body, cst.IndentedBlock):
            return updated
        imported = [
            alias.evaluated_alias or alias.evaluated_name
            for stmt in updated.body.body if isinstance(stmt, cst.SimpleStatementLine)
            for small in stmt.body if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar)
            for alias in small.names
        ]
        handlers = []
        for handler in updated.handlers:
            missing = [n for n in imported if "." not in n and n not in _bound_names(handler)]
            if missing and _catches_import_error(handler) and isinstance(handler.body, cst.IndentedBlock):
                self.changes += 1
                fallback = cst.parse_statement(" = ".join(missing) + " = None  # cpu-test flavor: bound as on success\n")
                handler = handler.with_changes(body=handler.body.with_changes(body=[*handler.body.body, fallback]))
            handlers.append(handler)
        return updated.with_changes(handlers=handlers)

    def visit_Import(self, node: cst.Import) -> bool:
        return False  # `import torch.cuda.nvtx as nvtx` stays: it imports on CPU-only torch

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom) -> cst.ImportFrom:
        if updated.module is not None and not updated.relative and _dotted(updated.module) == "torch.cuda":
            self.changes += 1
            return updated.with_changes(module=cst.parse_expression(SHIM_MODULE))
        return updated

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        if isinstance(updated.value, cst.Name) and updated.value.value == "torch" and updated.attr.value == "cuda":
            self.changes += 1
            return cst.Name(ALIAS)
        if updated.attr.value == "is_cuda":
            self.changes += 1
            return cst.Call(func=cst.parse_expression(f"{ALIAS}.is_on_device"), args=[cst.Arg(updated.value)])
        return updated

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        func = updated.func
        if _dotted(func) == "torch.device" and updated.args and _dotted(updated.args[0].value) == f"{ALIAS}.DEVICE":
            rest = [a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in updated.args[1:2]]
            return updated.with_changes(func=cst.parse_expression(f"{ALIAS}.make_device"), args=rest)
        if not (isinstance(func, cst.Attribute) and func.attr.value == "cuda"):
            return updated
        if isinstance(func.value, cst.Name) and func.value.value in ("torch", ALIAS):
            return updated
        self.changes += 1
        comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")) if updated.args else cst.MaybeSentinel.DEFAULT
        first = cst.Arg(value=func.value, comma=comma)
        return updated.with_changes(func=cst.parse_expression(f"{ALIAS}.to_device"), args=[first, *updated.args])

    def leave_SimpleString(self, original: cst.SimpleString, updated: cst.SimpleString) -> cst.BaseExpression:
        value = updated.evaluated_value
        if value == "cuda":
            self.changes += 1
            return cst.parse_expression(f"{ALIAS}.DEVICE")
        if isinstance(value, str) and value.startswith("torch.cuda.") and value.endswith("Tensor"):
            self.changes += 1  # a tensor type name, as in `param.grad.type() == 'torch.cuda.FloatTensor'`
            return cst.parse_expression(f"{ALIAS}.type_name({updated.value})")
        return updated


def _catches_import_error(handler: cst.ExceptHandler) -> bool:
    names = {_dotted(handler.type)} if handler.type is not None and not isinstance(handler.type, cst.Tuple) else (
        {_dotted(e.value) for e in handler.type.elements} if handler.type is not None else {"BaseException"})
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def _bound_names(handler: cst.ExceptHandler) -> set[str]:
    """Names a handler binds anywhere in its body (assignments and imports)."""
    found: set[str] = set()

    class Binder(cst.CSTVisitor):
        def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
            found.update(n.value for n in _names_in(node.target))

        def visit_ImportAlias(self, node: cst.ImportAlias) -> None:
            found.add(node.evaluated_alias or node.evaluated_name)

        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            found.add(node.name.value)
            return False

        def visit_ClassDef(self, node: cst.ClassDef) -> bool:
            found.add(node.name.value)
            return False

    handler.body.visit(Binder())
    return found


def _names_in(node: cst.BaseExpression) -> list[cst.Name]:
    if isinstance(node, cst.Name):
        return [node]
    if isinstance(node, (cst.Tuple, cst.List)):
        return [n for e in node.elements for n in _names_in(e.value)]
    return []


def _dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return ""
