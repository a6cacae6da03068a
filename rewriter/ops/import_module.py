"""``import_module``: bring a module of another upstream release into the tree, under a new name.

Two halves:

* :func:`resolve_imports` (no libcst) runs before the engine: it reads each edit's ``source``
  from the verified tree of its ``from_release`` and returns the series with that text as the
  edit's code, the source's sha256 and the release's digest in its arguments (so the manifest
  records them and the content-addressed caches key on them), and the *moves*: every module the
  same patch imports from the same release, old dotted name -> new dotted name. It also checks
  that every ``use_pinned`` name is defined by the pinned upstream's module of the same path.
* :func:`import_module` (libcst) writes the file: the source with its imports rewritten.

The rewrite, in order of precedence for every name an import binds:

1. ``imports`` (explicit redirects, ``old.module.Name: new.module.Name``): the name is imported
   from the new place (e.g. an adapter written by the patch);
2. a moved module imported by name (``from megatron.core.transformer.moe import experts``) is
   imported from its new package;
3. a name imported from a moved module comes from the moved module;
4. anything else stays (it is the pinned upstream's module of that name).

Relative imports become absolute (resolved against the source's package), so that they keep
meaning the same module after the move. ``use_pinned`` names top-level functions or classes whose
definition is replaced by an import of the pinned upstream's definition of the same module path:
for state that must be shared with the rest of the pinned tree (a class attribute the pinned
training schedule sets) or code calling an API the pinned upstream no longer has.

The written file starts with the source's own header comments (its licence), then lines saying
which patch imported it from where, with the source digest.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from rewriter.errors import ApplyError, DriftError
from rewriter.ops.dotted import module_name
from rewriter.patchset.model import Edit, Patch

OP = "import_module"


class ReleaseTree(Protocol):
    """What :func:`resolve_imports` needs of a resolved release (an :class:`UpstreamTree`)."""

    @property
    def version(self) -> str: ...

    @property
    def tag(self) -> str | None: ...

    @property
    def digest(self) -> str: ...

    def read(self, rel: str) -> str | None: ...


def has_imports(series: list[Patch]) -> bool:
    return any(e.op == OP and e.applies for p in series for e in p.edits)


def resolve_imports(
    series: list[Patch],
    releases: Callable[[str], ReleaseTree] | None,
    read_upstream: Callable[[str], str | None],
    upstream_label: str,
    strict: bool = True,
) -> list[Patch]:
    """The series with every ``import_module`` edit's source read and its moves computed.

    An edit that cannot be prepared raises :class:`DriftError`; with ``strict=False`` it carries
    the message in ``Edit.failure`` instead, so the engine reports it with the other edits.
    """
    if not has_imports(series):
        return series
    if releases is None:
        raise ApplyError("the series imports modules from other releases, but no release resolver was given")
    out = []
    for patch in series:
        edits = [e for e in patch.edits if e.op == OP and e.applies]
        if not edits:
            out.append(patch)
            continue
        resolved = []
        for i, edit in enumerate(patch.edits):
            if edit.op != OP or not edit.applies:
                resolved.append(edit)
                continue
            try:
                resolved.append(_resolve_one(patch, i, edit, edits, releases, read_upstream, upstream_label))
            except DriftError as exc:
                if strict:
                    raise
                resolved.append(replace(edit, failure=str(exc)))
        out.append(replace(patch, edits=tuple(resolved)))
    return out


def _resolve_one(patch: Patch, i: int, edit: Edit, edits: list[Edit], releases: Callable[[str], ReleaseTree],
                 read_upstream: Callable[[str], str | None], upstream_label: str) -> Edit:
    """One ``import_module`` edit with its source text, moves and digests."""
    tree = releases(edit.args["from_release"])
    text = tree.read(edit.args["source"])
    if text is None:
        raise DriftError(
            f"patch {patch.id} edits[{i}] ({OP}) at {edit.file}: anchor-missing: "
            f"{edit.args['source']} is not in megatron-core {tree.version} ({tree.tag}) [{edit.source}]"
        )
    same_release = {
        module_name(e.args["source"]): module_name(e.file)
        for e in edits if e.args["from_release"] == edit.args["from_release"]
    }
    _check_pinned(patch, i, edit, read_upstream, upstream_label)
    args = {
        **edit.args,
        "moves": dict(sorted(same_release.items())),
        "source_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "release_tag": tree.tag or "",
        "release_digest": tree.digest,
    }
    return replace(edit, args=args, code=text)


def _check_pinned(patch: Patch, i: int, edit: Edit, read_upstream: Callable[[str], str | None], label: str) -> None:
    """Every ``use_pinned`` name must be a top-level definition of the pinned module."""
    names = edit.args.get("use_pinned") or []
    if not names:
        return
    text = read_upstream(edit.args["source"])
    defined: set[str] = set()
    if text is not None:
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
    missing = [n for n in names if n not in defined]
    if missing:
        where = f"{edit.args['source']} of upstream {label}" if text is not None else f"upstream {label} (no {edit.args['source']})"
        raise DriftError(
            f"patch {patch.id} edits[{i}] ({OP}) at {edit.file}: anchor-missing: use_pinned "
            f"{', '.join(missing)} not defined at the top level of {where} [{edit.source}]"
        )


def provenance(edit: Edit, patch_id: str) -> str:
    """The comment lines the imported file starts with, after the source's own header."""
    a = edit.args
    return (
        f"# primus: {patch_id}: imported from megatron-core {a['from_release']} ({a.get('release_tag') or 'no tag'}, "
        f"source digest {a.get('release_digest', '?')})\n"
        f"# primus: {a['source']} sha256:{a.get('source_sha256', '?')}, imports rewritten by primus-rewriter\n"
    )


def import_module(edit: Edit, patch_id: str, existing: str | None) -> tuple[Any, str | None, str]:
    """Return (status, text to write, message) for creating ``edit.file`` from the imported source."""
    from rewriter.ops.base import Status

    if edit.code is None:  # pragma: no cover - resolve_imports always fills it
        raise ApplyError(f"{edit.file}: import_module edit was not resolved [{edit.source}]")
    from rewriter.ops.import_rewrite import Missing, rewrite_imports

    try:
        text = rewrite_imports(
            edit.code,
            source=edit.args["source"],
            moves=edit.args.get("moves", {}),
            redirects=edit.args.get("imports") or {},
            use_pinned=edit.args.get("use_pinned") or [],
            header=provenance(edit, patch_id),
        )
    except Missing as exc:
        return Status.MISSING, existing, str(exc)
    if existing is None:
        return Status.APPLIED, text, ""
    if existing == text:
        return Status.PRESENT, existing, ""
    return Status.AMBIGUOUS, existing, f"{edit.file} already exists upstream with different content"
