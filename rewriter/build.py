"""The build, as a list of named steps (load, resolve, apply, emit, move into place).

Everything is written into a temporary folder beside the output folder and moved into place
only when every step succeeded, so a failed build leaves the previous output untouched and no
partial one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rewriter.cache import FileCache, JsonCache, cache_key, clean_leftovers
from rewriter.emit.diffs import unified_diff
from rewriter.emit.manifest import (
    SUPPORT_PACKAGE,
    build_manifest,
    imported_from,
    local_version,
    manifest_json,
    support_init,
)
from rewriter.emit.staging import stage_tree
from rewriter.emit.wheel import build_environment, build_wheel
from rewriter.engine import OK_STATUSES, SeriesResult, apply_series
from rewriter.errors import DriftError, EmitError
from rewriter.patchset.loader import load_patchsets
from rewriter.patchset.model import Patchsets
from rewriter.semantic import broken_message, check_series
from rewriter.stale import clean_stale, owned_prefix
from rewriter.ui import UI
from rewriter.upstream import Pin, UpstreamTree, load_pin, resolve, resolve_release


@dataclass(frozen=True)
class Paths:
    """Where the inputs and caches are; all default to folders of the repository."""

    patchsets: Path
    pin: Path
    upstream_cache: Path
    build_cache: Path | None  # None disables the engine and wheel caches


@dataclass(frozen=True)
class Upstream:
    """Which upstream to build from: a commit (``sha``), or a release by PyPI version."""

    sha: str | None = None
    repo: str | None = None
    sdist: Path | None = None
    release: str | None = None


@dataclass
class Applied:
    """Patchsets applied to a resolved upstream: what every command works from."""

    patchsets: Patchsets
    upstream: UpstreamTree
    result: SeriesResult
    timings: dict[str, float] = field(default_factory=dict)

    def prefix(self, version: str | None) -> set[str]:
        return {p.id for p in self.patchsets.series(version)} if version else set()

    def tree(self, version: str | None) -> dict[str, str]:
        return self.result.tree(self.prefix(version))

    def diff(self, version: str, against: str | None) -> str:
        """Diff of a version's tree against another version's (``None``: upstream)."""
        new, old = self.tree(version), self.tree(against)
        paths = set(new) | set(old)
        changes = {p: (old.get(p, self.upstream.read(p)), new.get(p, self.upstream.read(p))) for p in paths}
        return unified_diff(changes)


@dataclass(frozen=True)
class Inputs:
    """The loaded patchsets and the resolved upstream: what applying starts from."""

    patchsets: Patchsets
    tree: UpstreamTree
    releases: Callable[[str], UpstreamTree]  # other releases, for import_module edits
    cache: JsonCache  # the engine's (and the semantic check's) cache


def load_inputs(paths: Paths, upstream: Upstream, ui: UI) -> Inputs:
    """Load and validate the patchsets, resolve and verify the upstream tree."""
    with ui.task("loading patchsets"):
        patchsets = load_patchsets(paths.patchsets)
        ui.info(f"{len(patchsets.versions)} versions, {len(patchsets.series())} patches")
    with ui.task("resolving upstream"):
        pin = load_pin(paths.pin)
        if upstream.release is not None:
            tree = resolve_release(upstream.release, pin, paths.upstream_cache, upstream.sdist, ui.info, ui.warn)
        else:
            tree = resolve(upstream.sha or pin.pinned.commit, pin, paths.upstream_cache, upstream.repo,
                           upstream.sdist, ui.info, ui.warn)
        ui.info(tree.label)
    clean_leftovers(paths.build_cache, ui.info)
    cache = JsonCache(paths.build_cache / "engine" if paths.build_cache else None, ui.warn)
    return Inputs(patchsets, tree, _release_resolver(pin, paths.upstream_cache, ui), cache)


def apply_patchsets(paths: Paths, upstream: Upstream, ui: UI, verify: bool = True) -> Applied:
    """Apply every patchset version to the upstream; any drift or broken result raises."""
    inputs = load_inputs(paths, upstream, ui)
    patchsets, tree, cache = inputs.patchsets, inputs.tree, inputs.cache
    with ui.task("applying patches"):
        result = apply_series(patchsets.series(), tree.read, tree.label, cache, verify=verify,
                              releases=inputs.releases, version=tree.version)
        for status in OK_STATUSES:
            n = sum(1 for r in result.reports if r.status == status)
            if n or status != "not-applicable":
                ui.info(f"{n} edits {status}")
    with ui.task("checking the patched code (compiles, names resolve on this release)"):
        problems = check_series(result, tree.read, tree.digest, cache)
        if problems:
            raise DriftError(broken_message(problems, tree.label))
    return Applied(patchsets, tree, result)


def _release_resolver(pin: Pin, cache_dir: Path, ui: UI) -> Callable[[str], UpstreamTree]:
    """Releases that ``import_module`` edits read from: verified sdists of the pin file, resolved once."""
    trees: dict[str, UpstreamTree] = {}

    def release(version: str) -> UpstreamTree:
        if version not in trees:
            trees[version] = resolve_release(version, pin, cache_dir, None, ui.info, ui.warn)
        return trees[version]

    return release


def build(paths: Paths, upstream: Upstream, out: Path, versions: list[str], ui: UI,
          verify: bool = True, wheels: bool = True, flavor: str = "default") -> Path:
    """Run the whole build; return the output folder.

    Diffs cover every patchset version. ``versions`` (oldest first) get a manifest and, unless
    ``wheels`` is false, a wheel each; with several, each goes under ``versions/<version>/`` and
    the last one is also put at the top of ``out``. A non-default ``flavor`` (see
    :mod:`rewriter.flavors`) adds its rewrites to every wheel and writes their diff.
    """
    out = out.resolve()
    tmp_out = _claim_output(out, ui)
    try:
        applied = apply_patchsets(paths, upstream, ui, verify)
        for version in versions:
            applied.patchsets.get(version)  # fail early on an unknown version
        with ui.task("writing diffs, manifests and report"):
            _write_diffs(applied, tmp_out)
            _write_report(applied, tmp_out)
        for version in versions:
            task = f"building wheel for {version}" if wheels else f"writing manifest for {version}"
            with ui.task(task):
                dest = tmp_out / "versions" / version if len(versions) > 1 else tmp_out
                produced = _emit_version(applied, version, dest, paths.build_cache, wheels, flavor, ui)
                if dest != tmp_out and version == versions[-1]:
                    for path in produced:
                        shutil.copyfile(path, tmp_out / path.name)
                ui.info(produced[-1].name)
        with ui.task(f"moving outputs into {out}"):
            _move_into_place(tmp_out, out)
    except OSError as exc:  # a full disk, a folder removed under us: the environment, not a bug
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise EmitError(f"cannot write {exc.filename or out}: {exc.strerror or exc}; the previous output is unchanged") from exc
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    return out


def _claim_output(out: Path, ui: UI) -> Path:
    """Create the temporary output folder beside ``out``, or fail before any work.

    Also removes what killed builds left beside ``out`` (see :mod:`rewriter.stale`).
    """
    if out.exists() and not out.is_dir():
        raise EmitError(f"output directory {out} exists and is not a directory; remove it or choose another --out")
    if out.is_dir():
        _check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out.parent, (f".{out.name}-partial-", f".{out.name}-old-"), ui.info)
        return Path(tempfile.mkdtemp(prefix=owned_prefix(f".{out.name}-partial-"), dir=out.parent))
    except OSError as exc:
        raise EmitError(f"output directory {out} is not writable: {exc.strerror} ({exc.filename or out.parent})") from exc


def _check_replaceable(out: Path) -> None:
    """An existing ``out`` is replaced by deleting it: every folder in it must be writable."""
    for folder in (out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink())):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise EmitError(
                f"output directory {out} cannot be replaced: {folder} is read-only; "
                "make it writable (chmod -R u+w) or choose another --out"
            )


def _move_into_place(tmp_out: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}-old-{tmp_out.name.split('-partial-', 1)[-1]}")
        out.replace(old)
    tmp_out.replace(out)
    umask = os.umask(0)
    os.umask(umask)
    out.chmod(0o777 & ~umask)  # mkdtemp made it private
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_diffs(applied: Applied, out: Path) -> None:
    number = 0
    for version in applied.patchsets.versions:
        vdir = out / "diffs" / "patches" / version.version
        vdir.mkdir(parents=True, exist_ok=True)
        for patch in version.patches:
            number += 1
            changes = applied.result.patch_changes(patch.id)
            (vdir / f"{number:03d}-{patch.id}.diff").write_text(unified_diff(changes), encoding="utf-8")
        versions_dir = out / "diffs" / "versions"
        versions_dir.mkdir(parents=True, exist_ok=True)
        name = version.version
        (versions_dir / f"{name}.upstream.diff").write_text(applied.diff(name, None), encoding="utf-8")
        previous = applied.patchsets.previous(name)
        (versions_dir / f"{name}.previous.diff").write_text(applied.diff(name, previous), encoding="utf-8")


def _write_report(applied: Applied, out: Path) -> None:
    report = {
        "upstream": {"commit": applied.upstream.commit, "origin": applied.upstream.origin,
                     "digest": applied.upstream.digest},
        "patches": {p.id: applied.result.patch_status(p) for p in applied.patchsets.series()},
        "edits": [r.__dict__ | {"candidates": list(r.candidates)} | imported_from(applied.result, r)
                  for r in applied.result.reports],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Sources:
    """Everything a wheel's staging tree is made of, besides the upstream files."""

    changed: dict[str, str]  # rewritten upstream files and modules the patches add
    support: dict[str, str]  # the generated support package
    label: str  # the local version label, e.g. primus.v0.4.0.cputest
    manifest: str  # manifest.json text

    def flavor_changes(self, patched: dict[str, str]) -> dict[str, str]:
        """Files the flavor rewrote (relative to the patched tree)."""
        return {p: t for p, t in self.changed.items() if patched.get(p) != t}


def sources(applied: Applied, version: str | None, flavor: str = "default",
            build_cache: Path | None = None, ui: UI | None = None) -> Sources:
    """The files of one (version, flavor): patched tree, flavor rewrites, support package."""
    changed = applied.tree(version)
    support: dict[str, str] = {}
    if flavor == "cpu-test":
        from rewriter.flavors import cpu_test

        files = {rel: applied.upstream.read(rel) or "" for rel in applied.upstream.files if rel.endswith(".py")}
        files.update(changed)
        cache = JsonCache(build_cache / "flavor" if build_cache else None, ui.warn if ui else lambda _m: None)
        changed = {**changed, **cpu_test.rewrite_tree(files, cache, ui.info if ui else lambda _m: None)}
        support[cpu_test.SHIM_FILE] = cpu_test.shim_source()
    elif flavor != "default":
        raise EmitError(f"unknown flavor {flavor!r}")
    manifest = build_manifest(applied.upstream, applied.patchsets, applied.result, version, flavor)
    text = manifest_json(manifest)
    support[f"{SUPPORT_PACKAGE}/__init__.py"] = support_init(manifest)
    support[f"{SUPPORT_PACKAGE}/manifest.json"] = text
    label = local_version(applied.upstream.version, version, flavor).split("+", 1)[1]
    return Sources(changed, support, label, text)


def stage_version(applied: Applied, version: str | None, dest: Path, flavor: str = "default",
                  build_cache: Path | None = None) -> None:
    """Write the importable source tree of one version (``None``: upstream + empty support package)."""
    src = sources(applied, version, flavor, build_cache)
    stage_tree(dest, applied.upstream, src.changed, src.support, src.label)


def _emit_version(applied: Applied, version: str, dest: Path, build_cache: Path | None, wheel: bool,
                  flavor: str, ui: UI) -> list[Path]:
    """Write one version's manifest, flavor diff and (optionally) wheel into ``dest``."""
    src = sources(applied, version, flavor, build_cache, ui)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest / "manifest.json"
    manifest.write_text(src.manifest, encoding="utf-8")
    written = [manifest]
    if flavor != "default":
        patched = applied.tree(version)
        changes = {p: (patched.get(p, applied.upstream.read(p)), t) for p, t in src.flavor_changes(patched).items()}
        flavor_diff = dest / f"flavor-{flavor}.diff"
        flavor_diff.write_text(unified_diff(changes), encoding="utf-8")
        written.append(flavor_diff)
    if not wheel:
        return written
    warn = ui.warn
    wheels = FileCache(build_cache / "wheels" if build_cache else None, warn)
    key = _wheel_key(applied.upstream.digest, src)
    cached = wheels.get(key)
    if cached is not None:
        shutil.copyfile(cached, dest / cached.name)
        return [*written, dest / cached.name]
    temp = Path(tempfile.gettempdir())
    clean_stale(temp, (STAGING_PREFIX,), ui.info)
    clean_stale(temp, ("staging-",), ui.info, accept=lambda p: (p / "src" / "megatron").is_dir())  # older naming
    with tempfile.TemporaryDirectory(prefix=owned_prefix(STAGING_PREFIX)) as tmp:
        staging = Path(tmp) / "src"
        stage_tree(staging, applied.upstream, src.changed, src.support, src.label)
        built = build_wheel(staging, dest, FileCache(build_cache / "helpers" if build_cache else None, warn))
    wheels.put(key, built)
    return [*written, built]


STAGING_PREFIX = "primus-staging-"


def _wheel_key(digest: str, src: Sources) -> str:
    """A wheel is decided by its staging tree (upstream digest + what we write) and the build environment."""
    parts = [digest, src.label, build_environment()]
    for rel, text in sorted({**src.changed, **src.support}.items()):
        parts += [rel, text]
    return cache_key("wheel", *parts)
