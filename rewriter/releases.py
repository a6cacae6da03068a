"""``releases add`` and ``releases list``: the upstream releases of the pin file.

Adding a release is what a maintainer does when upstream ships: fetch the sdist from the
package index (or take ``--sdist PATH``), import its source files like every build does, and
record in ``vendor/upstream.yaml`` what later builds verify against: the sdist's sha256, the
source digest, the tag and (when known) the git commit. The pin file is edited as text, an
entry appended to its ``releases:`` (with a commit) or ``testbed:`` (without) list, so its
comments and order stay; the result is parsed and checked before it replaces the old file
atomically. Afterwards the release resolves offline from the cache, exactly as ``build`` and
``matrix`` will resolve it.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rewriter.cache import atomic_write_bytes, discard, sha256_file
from rewriter.errors import UpstreamError, UsageError
from rewriter.lock import folder_lock
from rewriter.sdist import fetch_sdist
from rewriter.upstream import (
    Pin,
    Release,
    UpstreamTree,
    cached_sdist,
    import_sdist,
    imported_tree_dir,
    load_pin,
    resolve_release,
    source_digest,
    source_files,
)

FULL_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$")


@dataclass(frozen=True)
class Added:
    """What ``releases add`` recorded (``new`` is false when the same entry was already there)."""

    release: Release
    tree: UpstreamTree
    new: bool


def default_tag(version: str) -> str:
    """Megatron-LM tags its megatron-core releases ``core_v<X.Y.Z>``."""
    return f"core_v{version}"


def add_release(
    pin_path: Path,
    cache_dir: Path,
    version: str,
    commit: str | None = None,
    tag: str | None = None,
    sdist: Path | None = None,
    supported: bool = False,
    log: Callable[[str], None] = lambda _m: None,
) -> Added:
    """Fetch, import and record ``version`` in the pin file; return the verified release.

    A version already listed with the same tag and commit is not touched (``new`` false);
    listed with a different one, it is refused: the pin file says what a release *is*, so a
    correction is a reviewed hand edit, not a side effect of this command.
    """
    version = version.strip()
    if not VERSION_RE.match(version):
        raise UsageError(f"releases add: {version!r} is not a release version such as 0.15.3")
    if commit is not None:
        commit = commit.strip().lower()
        if not FULL_SHA_RE.match(commit):
            raise UsageError(
                f"releases add --commit {commit!r}: give the full 40-digit git sha of the release's tag "
                "(`git rev-parse <tag>^{commit}`); a prefix or a tag name is not recorded"
            )
    pin = load_pin(pin_path)
    existing = pin.find(version)
    if existing is not None:
        if (tag is not None and tag != existing.tag) or (commit is not None and commit != existing.commit):
            raise UpstreamError(
                f"{pin_path}: release {version} is already listed (tag {existing.tag}, commit "
                f"{existing.commit or 'not recorded'}); edit the entry by hand to change it"
            )
        return Added(existing, resolve_release(version, pin, cache_dir, sdist, log), new=False)
    tag = tag or default_tag(version)
    with folder_lock(cache_dir, log):
        archive = _sdist_into_cache(pin, cache_dir, version, sdist, log)
        provisional = Release(version, tag, commit or "", sha256_file(archive), "", supported)
        tree_dir = imported_tree_dir(cache_dir, pin.package, version)
        discard(tree_dir)  # whatever is there was imported from an sdist the pin did not record
        log(f"importing {archive.name} into {tree_dir}")
        import_sdist(archive, tree_dir, pin, provisional)
        digest = source_digest(tree_dir, source_files(tree_dir, pin.files))
    release = Release(version, tag, commit or "", provisional.sdist_sha256, digest, supported)
    write_pin(pin_path, append_release(pin_path.read_text(encoding="utf-8"), release))
    tree = resolve_release(version, load_pin(pin_path), cache_dir, None, log)  # offline, as a build will
    return Added(release, tree, new=True)


def _sdist_into_cache(pin: Pin, cache_dir: Path, version: str, given: Path | None,
                      log: Callable[[str], None]) -> Path:
    """The sdist at its cache path: copied from ``given``, else downloaded (index sha256 checked)."""
    target = cached_sdist(cache_dir, pin.package, version)
    if given is None:
        return fetch_sdist(pin.package, version, None, target, log)
    if not given.is_file():
        raise UpstreamError(f"--sdist {given}: no such file")
    atomic_write_bytes(target, given.read_bytes())
    return target


# -- the pin file as text -----------------------------------------------------------------------


def render_entry(release: Release, indent: str) -> str:
    """One list item in the pin file's style (versions quoted: ``0.10`` must not become a float)."""
    lines = [f'version: "{release.version}"', f"tag: {release.tag}"]
    if release.commit:
        lines.append(f"commit: {release.commit}")
    lines += [f"sdist_sha256: {release.sdist_sha256}", f"source_digest: {release.source_digest}"]
    if release.supported:
        lines.append("supported: true")
    head, rest = lines[0], lines[1:]
    return "".join([f"{indent}- {head}\n", *(f"{indent}  {line}\n" for line in rest)])


def append_release(text: str, release: Release) -> str:
    """``text`` with ``release`` appended to ``releases:`` (it has a commit) or ``testbed:``.

    The entry goes after the last item of that top-level list, keeping every comment and the
    order of everything else; a missing ``testbed:`` is added at the end of the file.
    """
    key = "releases" if release.commit else "testbed"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(rf"^{key}:\s*(#.*)?$", line)), None)
    if start is None:
        tail = "" if text.endswith("\n") or not text else "\n"
        return text + tail + f"{key}:\n" + render_entry(release, "  ")
    last_item = start
    indent = "  "
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line[0].isspace() and not line.startswith("-"):
            break
        if line.strip() and not line.lstrip().startswith("#"):
            last_item = i
        match = re.match(r"^(\s*)- ", line)
        if match:
            indent = match.group(1)
    return "".join([*lines[: last_item + 1], render_entry(release, indent), *lines[last_item + 1:]])


def write_pin(path: Path, text: str) -> None:
    """Check that ``text`` is a valid pin file, then replace ``path`` with it atomically."""
    with tempfile.TemporaryDirectory(prefix="primus-pin-") as tmp:
        probe = Path(tmp) / path.name
        probe.write_text(text, encoding="utf-8")
        load_pin(probe)  # raises on anything malformed; the old file is untouched
    atomic_write_bytes(path, text.encode("utf-8"))


# -- listing ------------------------------------------------------------------------------------


def release_rows(pin: Pin, cache_dir: Path) -> list[dict[str, str]]:
    """One row per release for ``releases list``: what it is and whether it is cached here."""
    rows = []
    for release in pin.every_release:
        if release.version == pin.pinned.version:
            kind = "pinned"
        else:
            kind = "release" if release.commit else "testbed"
        cached = [name for name, path in (("sdist", cached_sdist(cache_dir, pin.package, release.version)),
                                          ("tree", imported_tree_dir(cache_dir, pin.package, release.version)))
                  if path.exists()]
        rows.append({
            "version": release.version,
            "kind": kind,
            "supported": "yes" if pin.is_supported(release) else "no",
            "tag": release.tag,
            "commit": release.commit or "-",
            "cached": "+".join(cached) or "-",
        })
    return rows


def format_rows(rows: list[dict[str, str]]) -> str:
    """Rows as aligned text columns, a header first."""
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    out = ["  ".join(k.ljust(widths[k]) for k in keys).rstrip()]
    out += ["  ".join(r[k].ljust(widths[k]) for k in keys).rstrip() for r in rows]
    return "\n".join(out) + "\n"

