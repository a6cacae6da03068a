"""Resolve the upstream source a build applies to, and prove it is the pinned one.

Two ways to the same bytes:

* **git** (``--upstream-repo URL|PATH``): clone into ``vendor/.cache/git``, then a detached
  worktree at exactly the requested commit under ``vendor/.cache/trees``.
* **PyPI** (the default for releases in ``vendor/upstream.yaml``): download the release's sdist,
  check its sha256, import its source files into a local git repository, and check the source
  digest, which equals the digest of ``megatron/core`` at the release tag.

Either way, a commit listed in the pin file must match its recorded digest, and a cached tree
with local modifications is refused rather than silently used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rewriter.errors import UpstreamError
from rewriter.yamlio import load_yaml

if TYPE_CHECKING:
    import git

SHA_RE = re.compile(r"^[0-9a-f]{4,40}$")
IMPORT_DATE = "2000-01-01T00:00:00+00:00"  # fixed, so the imported repository is reproducible


@dataclass(frozen=True)
class Release:
    version: str
    tag: str
    commit: str  # "" for a testbed release whose commit the pin does not record
    sdist_sha256: str
    source_digest: str


@dataclass(frozen=True)
class Pin:
    """The contents of ``vendor/upstream.yaml``."""

    repository: str
    package: str
    pinned: Release
    releases: tuple[Release, ...]
    files: tuple[str, ...]
    testbed: tuple[Release, ...] = ()

    def release_for(self, sha: str) -> Release | None:
        matches = [r for r in self.releases if r.commit.startswith(sha)]
        if len(matches) > 1:
            raise UpstreamError(f"sha prefix {sha!r} matches several pinned releases; give more digits")
        return matches[0] if matches else None


@dataclass(frozen=True)
class UpstreamTree:
    """A verified upstream checkout: where it is and what it is."""

    root: Path
    repository: str
    commit: str
    version: str
    tag: str | None
    digest: str
    origin: str  # "git" or "pypi-sdist"
    files: tuple[str, ...]

    def read(self, rel: str) -> str | None:
        path = self.root / rel
        return path.read_text(encoding="utf-8") if path.is_file() else None

    @property
    def label(self) -> str:
        at = self.commit[:12] or "commit not recorded"
        return f"{self.repository}@{at} ({self.tag or self.version}, from {self.origin})"


def load_pin(path: Path) -> Pin:
    data = load_yaml(path)
    try:
        releases = tuple(
            Release(str(r["version"]), r["tag"], r["commit"], r["sdist_sha256"], r["source_digest"])
            for r in data["releases"]
        )
        testbed = tuple(
            Release(str(r["version"]), r["tag"], "", r["sdist_sha256"], r["source_digest"])
            for r in data.get("testbed", [])
        )
        pinned = next(r for r in releases if r.version == str(data["pinned"]))
        return Pin(data["repository"], data["package"], pinned, releases, tuple(data["files"]), testbed)
    except (KeyError, TypeError, StopIteration) as exc:
        raise UpstreamError(f"{path}: malformed pin file ({exc!r}); see the comment at its top") from exc


def source_files(root: Path, globs: tuple[str, ...]) -> tuple[str, ...]:
    found = {p.relative_to(root).as_posix() for g in globs for p in root.glob(g) if p.is_file()}
    return tuple(sorted(found))


def source_digest(root: Path, files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).hexdigest().encode() + b"\n")
    return "sha256:" + h.hexdigest()


def resolve(
    sha: str,
    pin: Pin,
    cache_dir: Path,
    repo: str | None = None,
    sdist: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> UpstreamTree:
    """Return the verified upstream tree for ``sha`` (see the module docstring)."""
    sha = sha.strip().lower()
    if not SHA_RE.match(sha):
        raise UpstreamError(f"--upstream {sha!r} is not a git sha (4 to 40 hex digits)")
    if repo is not None:
        return _from_git(sha, pin, cache_dir, repo, log)
    release = pin.release_for(sha)
    if release is None:
        known = ", ".join(f"{r.commit[:12]} ({r.tag})" for r in pin.releases)
        raise UpstreamError(
            f"unknown upstream sha {sha!r}: it is not a release in the pin file (known: {known}); "
            "pass --upstream-repo URL|PATH to resolve it with git"
        )
    return _from_pypi(release, pin, cache_dir, sdist, log)


def resolve_release(
    version: str,
    pin: Pin,
    cache_dir: Path,
    sdist: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> UpstreamTree:
    """A release by its PyPI version (pinned or testbed), from its verified sdist."""
    release = next((r for r in (*pin.releases, *pin.testbed) if r.version == version), None)
    if release is None:
        known = ", ".join(r.version for r in (*pin.releases, *pin.testbed))
        raise UpstreamError(f"unknown upstream release {version!r} (the pin file lists: {known})")
    return _from_pypi(release, pin, cache_dir, sdist, log)


# -- git ---------------------------------------------------------------------------------------


def _from_git(sha: str, pin: Pin, cache_dir: Path, repo: str, log: Callable[[str], None]) -> UpstreamTree:
    import git

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", repo.rstrip("/"))[-80:]
    clone_dir = cache_dir / "git" / slug
    try:
        if not (clone_dir / ".git").exists() and not (clone_dir / "HEAD").exists():
            log(f"cloning {repo} into {clone_dir}")
            clone_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=clone_dir.parent))
            try:
                git.Repo.clone_from(repo, tmp, bare=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # no half-cloned folder left in the cache
                raise
            tmp.replace(clone_dir)
        clone = git.Repo(clone_dir)
        full = _rev_parse(clone, sha)
        if full is None:
            log(f"fetching {repo}")
            clone.git.fetch(repo, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
            full = _rev_parse(clone, sha)
        if full is None:
            raise UpstreamError(f"unknown upstream sha {sha!r}: no such commit in {repo}")
        tree_dir = cache_dir / "trees" / full
        if not tree_dir.exists():
            log(f"checking out {full[:12]} into {tree_dir}")
            tree_dir.parent.mkdir(parents=True, exist_ok=True)
            clone.git.worktree("prune")
            clone.git.worktree("add", "--detach", str(tree_dir), full)
        worktree = git.Repo(tree_dir)
        if worktree.head.commit.hexsha != full:
            raise UpstreamError(f"{tree_dir}: checked out at {worktree.head.commit.hexsha[:12]}, not {full[:12]}; delete it and rebuild")
        if worktree.is_dirty(untracked_files=True):
            raise UpstreamError(f"{tree_dir}: the upstream checkout has local modifications; delete it and rebuild")
    except git.GitCommandError as exc:
        raise UpstreamError(f"git failed for {repo}: {_git_failure(exc)}") from exc
    files = source_files(tree_dir, pin.files)
    digest = source_digest(tree_dir, files)
    release = next((r for r in pin.releases if r.commit == full), None)
    if release is not None and digest != release.source_digest:
        raise UpstreamError(
            f"digest mismatch for {full[:12]} ({release.tag}): pin says {release.source_digest}, "
            f"the checkout has {digest}"
        )
    version = release.version if release else _package_version(tree_dir)
    return UpstreamTree(tree_dir, repo, full, version, release.tag if release else None, digest, "git", files)


def _git_failure(exc: Exception) -> str:
    """git's own message on one line (GitPython wraps stderr as ``\\n  stderr: '...'``)."""
    stderr = str(getattr(exc, "stderr", "") or "").strip()
    if stderr.startswith("stderr: '") and stderr.endswith("'"):
        stderr = stderr[len("stderr: '"):-1]
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(lines) or f"{' '.join(map(str, getattr(exc, 'command', [])))} exited with {getattr(exc, 'status', '?')}"


def _rev_parse(repo: git.Repo, sha: str) -> str | None:
    import git

    try:
        out = repo.git.rev_parse("--verify", "--quiet", f"{sha}^{{commit}}")
    except git.GitCommandError as exc:
        if "ambiguous" in (exc.stderr or ""):
            raise UpstreamError(f"sha prefix {sha!r} is ambiguous; give more digits") from exc
        return None
    return str(out).strip() or None


def _package_version(root: Path) -> str:
    info = root / "megatron" / "core" / "package_info.py"
    if not info.is_file():
        raise UpstreamError(f"{root}: no megatron/core/package_info.py; is this a Megatron-LM checkout?")
    scope: dict[str, object] = {}
    exec(compile(info.read_text(encoding="utf-8"), str(info), "exec"), scope)  # a constants-only module
    return str(scope["__version__"])


# -- PyPI --------------------------------------------------------------------------------------


def _from_pypi(release: Release, pin: Pin, cache_dir: Path, sdist: Path | None, log: Callable[[str], None]) -> UpstreamTree:
    import git

    tree_dir = cache_dir / "pypi" / f"{pin.package}-{release.version}"
    if tree_dir.exists():
        repo = git.Repo(tree_dir)
        if repo.is_dirty(untracked_files=True):
            raise UpstreamError(f"{tree_dir}: the imported upstream has local modifications; delete it and rebuild")
    else:
        archive = sdist or _download_sdist(pin.package, release, cache_dir / "sdist", log)
        actual = hashlib.sha256(archive.read_bytes()).hexdigest()
        if actual != release.sdist_sha256:
            raise UpstreamError(
                f"digest mismatch: {archive} has sha256 {actual}, the pin file expects {release.sdist_sha256} "
                f"for {pin.package}=={release.version}"
            )
        log(f"importing {archive.name} into {tree_dir}")
        _import_sdist(archive, tree_dir, pin, release)
    files = source_files(tree_dir, pin.files)
    digest = source_digest(tree_dir, files)
    if digest != release.source_digest:
        raise UpstreamError(
            f"digest mismatch: {pin.package} {release.version} imported at {tree_dir} has {digest}, but "
            f"{release.tag} ({release.commit[:12]}) has {release.source_digest}; delete {tree_dir} and rebuild"
        )
    return UpstreamTree(tree_dir, pin.repository, release.commit, release.version, release.tag, digest, "pypi-sdist", files)


def _download_sdist(package: str, release: Release, dest: Path, log: Callable[[str], None]) -> Path:
    name = f"{package.replace('-', '_')}-{release.version}.tar.gz"
    target = dest / name
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading {package}=={release.version} sdist from PyPI")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, f"{package}=={release.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or len(got) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UpstreamError(f"cannot download {package}=={release.version} from PyPI: {tail[0]}")
        got[0].replace(target)
    return target


def _import_sdist(archive: Path, tree_dir: Path, pin: Pin, release: Release) -> None:
    """Unpack the sdist's source files into a new git repository, committed at a fixed date."""
    import git

    tree_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=tree_dir.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(work / "x", filter="data")
        tops = [p for p in (work / "x").iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise UpstreamError(f"{archive}: expected one top-level folder in the sdist")
        top, repo_dir = tops[0], work / "repo"
        for rel in source_files(top, pin.files):
            (repo_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(top / rel, repo_dir / rel)
        repo = git.Repo.init(repo_dir)
        repo.git.add("--all")
        who = {"NAME": "primus-rewriter", "EMAIL": "rewriter@localhost", "DATE": IMPORT_DATE}
        env = {f"GIT_{role}_{key}": value for role in ("AUTHOR", "COMMITTER") for key, value in who.items()}
        with repo.git.custom_environment(**env):
            repo.git.commit("-q", "--no-verify", "-m",
                            f"{pin.package} {release.version} from PyPI (= {release.tag} {release.commit})")
        repo.git.tag(release.tag)
        repo.close()
        repo_dir.replace(tree_dir)
    except (OSError, tarfile.TarError) as exc:
        raise UpstreamError(f"cannot import {archive}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def default_cache_dir(root: Path) -> Path:
    return Path(os.environ.get("PRIMUS_REWRITER_CACHE", root / "vendor" / ".cache"))
