"""Frozen dataclasses for loaded patchsets.

These are what the engine and the emitters see; YAML never leaves :mod:`rewriter.patchset.loader`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Flag:
    """A documented Primus flag: one row of the patch-notes tables."""

    name: str
    type: str
    default: Any
    version: str
    description: str
    notes: str
    table: str  # "module" or "model": which patch-notes table lists it
    origin: str  # "primus": the patch adds it; "upstream": upstream already defines it
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    #: what Primus configs set when it differs from ``default`` (the megatron-core field's default,
    #: which is upstream behaviour)
    primus_default: Any = None
    has_primus_default: bool = False
    #: the megatron-core release that has the same option itself, with the same meaning
    upstream_since: str | None = None
    #: values at which upstream already behaves as the flag says, besides ``default``
    upstream_values: tuple[Any, ...] = ()
    #: "core": megatron-core reads it; "trainer": primus_runtime implements it
    scope: str = "core"
    #: for a trainer flag, the primus_runtime module that implements it
    runtime_module: str | None = None
    #: False for a documented flag no patch implements yet (a series' ``planned_flags``)
    implemented: bool = True

    @property
    def config_default(self) -> Any:
        """The value Primus's shipped configs hold: ``primus_default`` where declared, else ``default``."""
        return self.primus_default if self.has_primus_default else self.default

    @property
    def upstream_equivalent(self) -> tuple[Any, ...]:
        """Every value that asks nothing of megatron-core: ``default`` (flag off is upstream), then
        the declared ``upstream_values``."""
        return (self.default, *(v for v in self.upstream_values if v != self.default))


@dataclass(frozen=True)
class Edit:
    """One operation on one file, as declared in a patch."""

    op: str
    file: str
    target: str | None
    args: dict[str, Any]
    expect: int
    guard: str | None
    code: str | None  # rendered template text (None for ops without code)
    template: str | None  # template path relative to the patch folder, for messages
    source: str  # "<patch.yaml>:<line>" for messages
    #: PEP 440 specifiers of the upstream releases this form applies to (``None``: every release)
    releases: str | None = None
    #: alternative forms for other releases (each with its own ``releases``), tried in order
    variants: tuple[Edit, ...] = ()
    #: which form this is: ``default``, or ``variants[<n>]``
    variant: str = "default"
    #: false once :meth:`for_release` found no form for the upstream release: the engine reports
    #: the edit ``not-applicable`` and leaves the file alone
    applies: bool = True
    #: set when the edit could not even be prepared for this release (an ``import_module`` source
    #: or ``use_pinned`` name it lacks); the engine reports it ``anchor-missing`` with this text
    failure: str = ""

    def for_release(self, version: str | None) -> Edit:
        """The form of this edit for upstream ``version``: the first variant whose ``releases``
        contains it, else the default form if its own range does (or it has none), else the
        default form marked as not applying. ``None`` (version unknown) picks the default form."""
        if version is None:
            return self
        for variant in self.variants:
            if release_in(version, variant.releases):
                return variant
        return self if release_in(version, self.releases) else replace(self, applies=False)

    def cache_token(self) -> str:
        """A stable text that changes whenever anything affecting this edit's output changes."""
        parts = [self.op, self.file, str(self.target), repr(sorted(self.args.items())),
                 str(self.expect), str(self.guard), str(self.code), str(self.releases), self.variant,
                 str(self.applies), self.failure]
        return "\x1f".join(parts)


def release_in(version: str, releases: str | None) -> bool:
    """``version`` satisfies the specifiers ``releases`` (``None``: any); pre-releases count."""
    if releases is None:
        return True
    try:
        return SpecifierSet(releases).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


@dataclass(frozen=True)
class Patch:
    """A patch: its flags, where it is implemented, its upstream status and its edits."""

    id: str
    summary: str
    version: str
    implemented_in: str  # "core" or "runtime"
    upstream_status: str  # "absent", "partial" or "present"
    upstream_note: str
    flags: tuple[Flag, ...]
    edits: tuple[Edit, ...]
    path: Path
    content_hash: str
    #: flags declared by earlier patches that this patch's edits are also gated by
    uses_flags: tuple[Flag, ...] = ()

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.flags)

    @property
    def gating_flags(self) -> tuple[Flag, ...]:
        """Every flag the patch's guards may read: its own, then those it uses."""
        return self.flags + self.uses_flags


@dataclass(frozen=True)
class PatchsetVersion:
    """One folder ``patchsets/vX.Y.Z``: the patches it adds, in series order."""

    version: str
    summary: str
    patches: tuple[Patch, ...]
    #: documented flags of this version that no patch implements yet
    planned_flags: tuple[Flag, ...] = ()

    @property
    def key(self) -> Version:
        return Version(self.version.lstrip("v"))


@dataclass(frozen=True)
class Patchsets:
    """Every version, oldest first. Versions are cumulative: vN applies all patches up to vN."""

    root: Path
    versions: tuple[PatchsetVersion, ...] = field(default_factory=tuple)

    def names(self) -> list[str]:
        return [v.version for v in self.versions]

    def get(self, version: str) -> PatchsetVersion:
        for v in self.versions:
            if v.version == version:
                return v
        known = ", ".join(self.names()) or "none"
        raise KeyError(f"unknown patchset version {version!r} (known: {known})")

    def series(self, upto: str | None = None) -> list[Patch]:
        """All patches of every version up to and including ``upto`` (default: newest)."""
        out: list[Patch] = []
        for v in self.versions:
            out.extend(v.patches)
            if v.version == upto:
                break
        return out

    def previous(self, version: str) -> str | None:
        names = self.names()
        i = names.index(version)
        return names[i - 1] if i > 0 else None

    def newest(self) -> str:
        return self.versions[-1].version

    def flags(self, upto: str | None = None) -> list[Flag]:
        return [f for p in self.series(upto) for f in p.flags]

    def registry(self) -> list[Flag]:
        """Every documented flag of every version, implemented or planned, in declaration order."""
        return [f for v in self.versions for f in (*(f for p in v.patches for f in p.flags), *v.planned_flags)]


def content_hash(files: list[Path]) -> str:
    """sha256 over the given files' names and bytes, in the given order."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()
