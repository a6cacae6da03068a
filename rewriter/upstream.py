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

import ast
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rewriter.cache import discard, sha256_file
from rewriter.errors import UpstreamError
from rewriter.lock import folder_lock
from rewriter.sdist import fetch_sdist
from rewriter.stale import clean_stale, owned_prefix
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
    #: a release the patchsets must build on: ``matrix`` fails when one of its patches does not
    supported: bool = False


@dataclass(frozen=True)
class Pin:
    """The contents of ``vendor/upstream.yaml``."""

    repository: str
    package: str
    pinned: Release
    releases: tuple[Release, ...]
    files: tuple[str, ...]
    testbed: tuple[Release, ...] = ()

    @property
    def every_release(self) -> tuple[Release, ...]:
        """Releases with a recorded commit, then the testbed, each oldest first."""
        return (*_by_version(self.releases), *_by_version(self.testbed))

    def find(self, version: str) -> Release | None:
        """The release (pinned, recorded or testbed) of this PyPI version."""
        return next((r for r in (*self.releases, *self.testbed) if r.version == version), None)

    def is_supported(self, release: Release) -> bool:
        """The pinned release always is; others when the pin file says ``supported: true``."""
        return release.supported or release.version == self.pinned.version

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


def _by_version(releases: tuple[Release, ...]) -> tuple[Release, ...]:
    from packaging.version import InvalidVersion, Version

    def key(r: Release) -> tuple[int, Version | str]:
        try:
            return (0, Version(r.version))
        except InvalidVersion:
            return (1, r.version)

    return tuple(sorted(releases, key=key))


def load_pin(path: Path) -> Pin:
    data = load_yaml(path)
    try:
        releases = tuple(
            Release(str(r["version"]), r["tag"], r["commit"], r["sdist_sha256"], r["source_digest"],
                    bool(r.get("supported", False)))
            for r in data["releases"]
        )
        testbed = tuple(
            Release(str(r["version"]), r["tag"], "", r["sdist_sha256"], r["source_digest"],
                    bool(r.get("supported", False)))
            for r in data.get("testbed") or []
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
    warn: Callable[[str], None] | None = None,
) -> UpstreamTree:
    """Return the verified upstream tree for ``sha`` (see the module docstring).

    ``warn`` gets the lines about damaged cache entries that were discarded (default: ``log``).
    """
    sha = sha.strip().lower()
    if not SHA_RE.match(sha):
        raise UpstreamError(f"--upstream {sha!r} is not a git sha (4 to 40 hex digits)")
    if repo is not None:
        with folder_lock(cache_dir, log):
            return _from_git(sha, pin, cache_dir, repo, log)
    release = pin.release_for(sha)
    if release is None:
        known = ", ".join(f"{r.commit[:12]} ({r.tag})" for r in pin.releases)
        raise UpstreamError(
            f"unknown upstream sha {sha!r}: it is not a release in the pin file (known: {known}); "
            "pass --upstream-repo URL|PATH to resolve it with git"
        )
    return _from_pypi(release, pin, cache_dir, sdist, log, warn or log)


def resolve_release(
    version: str,
    pin: Pin,
    cache_dir: Path,
    sdist: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    warn: Callable[[str], None] | None = None,
) -> UpstreamTree:
    """A release by its PyPI version (pinned or testbed), from its verified sdist."""
    release = pin.find(version)
    if release is None:
        known = ", ".join(r.version for r in pin.every_release)
        raise UpstreamError(f"unknown upstream release {version!r} (the pin file lists: {known}); "
                            f"add it with `python -m rewriter releases add {version}`")
    return _from_pypi(release, pin, cache_dir, sdist, log, warn or log)


# -- git ---------------------------------------------------------------------------------------


def _from_git(sha: str, pin: Pin, cache_dir: Path, repo: str, log: Callable[[str], None]) -> UpstreamTree:
    import git

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", repo.rstrip("/"))[-80:]
    clone_dir = cache_dir / "git" / slug
    try:
        if not (clone_dir / ".git").exists() and not (clone_dir / "HEAD").exists():
            log(f"cloning {repo} into {clone_dir}")
            clone_dir.parent.mkdir(parents=True, exist_ok=True)
            clean_stale(clone_dir.parent, (".clone-",), log)
            tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(".clone-"), dir=clone_dir.parent))
            try:
                git.Repo.clone_from(repo, tmp, bare=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # no half-cloned folder left in the cache
                raise
            tmp.replace(clone_dir)
        clone = git.Repo(clone_dir)
        full = _find_commit(clone, sha, repo)
        if full is None:
            log(f"fetching {repo}")
            clone.git.fetch(repo, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
            full = _find_commit(clone, sha, repo)
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
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise UpstreamError(f"{exc}: not a usable git repository (damaged cache entry); delete it and rebuild") from exc
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


def _find_commit(repo: git.Repo, sha: str, url: str) -> str | None:
    """The full sha of the commit ``sha`` names in ``repo``, ``None`` if none does.

    A prefix that names several commits is an error listing them (fetching cannot make it
    unique, so it is not tried).
    """
    import git

    if len(sha) == 40:
        try:
            out = repo.git.rev_parse("--verify", "--quiet", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return None
        return str(out).strip() or None
    listed = repo.git.rev_list("--all")
    matches = sorted({line for line in str(listed).split() if line.startswith(sha)})
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:10]) + (", ..." if len(matches) > 10 else "")
        raise UpstreamError(f"sha prefix {sha!r} is ambiguous in {url}: {len(matches)} commits match ({shown}); give more digits")
    return matches[0] if matches else None


def _package_version(root: Path) -> str:
    """The version in ``megatron/core/package_info.py``, read without running upstream code.

    A plain ``__version__ = "..."`` is taken as it is; otherwise the version is composed the
    way upstream composes it, from the literal ``MAJOR``, ``MINOR``, ``PATCH`` and ``PRE_RELEASE``.
    """
    info = root / "megatron" / "core" / "package_info.py"
    if not info.is_file():
        raise UpstreamError(f"{root}: no megatron/core/package_info.py; is this a Megatron-LM checkout?")
    try:
        tree = ast.parse(info.read_bytes(), str(info))
    except (SyntaxError, ValueError) as exc:
        raise UpstreamError(f"{info}: cannot parse it to read the version: {exc}") from exc
    literals: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                literals[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    if isinstance(literals.get("__version__"), str):
        return str(literals["__version__"])
    parts = [literals.get(name) for name in ("MAJOR", "MINOR", "PATCH")]
    if not all(isinstance(p, (int, str)) for p in parts):
        raise UpstreamError(f"{info}: no literal __version__ or MAJOR/MINOR/PATCH to read the version from")
    return ".".join(map(str, parts)) + str(literals.get("PRE_RELEASE") or "")


# -- PyPI --------------------------------------------------------------------------------------


def _from_pypi(release: Release, pin: Pin, cache_dir: Path, sdist: Path | None, log: Callable[[str], None],
               warn: Callable[[str], None]) -> UpstreamTree:
    with folder_lock(cache_dir, log):
        tree_dir = imported_tree_dir(cache_dir, pin.package, release.version)
        clean_stale(tree_dir.parent, (".import-", ".trash-"), log)
        if tree_dir.exists() and not _imported_tree_usable(tree_dir, warn):
            discard(tree_dir)
        if not tree_dir.exists():
            archive = _verified_sdist(pin.package, release, cache_dir, sdist, log, warn)
            log(f"importing {archive.name} into {tree_dir}")
            import_sdist(archive, tree_dir, pin, release)
    files = source_files(tree_dir, pin.files)
    digest = source_digest(tree_dir, files)
    if digest != release.source_digest:
        raise UpstreamError(
            f"digest mismatch: {pin.package} {release.version} imported at {tree_dir} has {digest}, but "
            f"{release.tag} ({release.commit[:12]}) has {release.source_digest}; delete {tree_dir} and rebuild"
        )
    return UpstreamTree(tree_dir, pin.repository, release.commit, release.version, release.tag, digest, "pypi-sdist", files)


def _imported_tree_usable(tree_dir: Path, warn: Callable[[str], None]) -> bool:
    """A clean git repository: true; damaged (broken ``.git``): warn, false; modified: refuse."""
    import git

    try:
        repo = git.Repo(tree_dir)
        dirty = repo.is_dirty(untracked_files=True)
        repo.head.commit  # noqa: B018 - a repository without its commit is damaged
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError, ValueError, OSError) as exc:
        warn(f"warning: the imported upstream {tree_dir} is damaged ({exc.__class__.__name__}); importing the sdist again")
        return False
    if dirty:
        raise UpstreamError(f"{tree_dir}: the imported upstream has local modifications; delete it and rebuild")
    return True


def imported_tree_dir(cache_dir: Path, package: str, version: str) -> Path:
    """Where a release's sdist is imported as a git repository."""
    return cache_dir / "pypi" / f"{package}-{version}"


def cached_sdist(cache_dir: Path, package: str, version: str) -> Path:
    """Where a release's verified sdist is kept."""
    return cache_dir / "sdist" / f"{package.replace('-', '_')}-{version}.tar.gz"


def _verified_sdist(package: str, release: Release, cache_dir: Path, given: Path | None, log: Callable[[str], None],
                    warn: Callable[[str], None]) -> Path:
    """The release's sdist with the pinned sha256: ``--sdist``, else the cached one, else downloaded."""
    if given is not None:
        if not given.is_file():
            raise UpstreamError(f"--sdist {given}: no such file")
        actual = sha256_file(given)
        if actual != release.sdist_sha256:
            raise UpstreamError(
                f"digest mismatch: {given} has sha256 {actual}, the pin file expects {release.sdist_sha256} "
                f"for {package}=={release.version}"
            )
        return given
    target = cached_sdist(cache_dir, package, release.version)
    clean_stale(target.parent, (".tmp-",), log)
    if target.is_file():
        actual = sha256_file(target)
        if actual == release.sdist_sha256:
            return target
        warn(f"warning: the cached sdist {target} has sha256 {actual}, not the pinned {release.sdist_sha256}; "
             "downloading it again")
        discard(target)
    return fetch_sdist(package, release.version, release.sdist_sha256, target, log)


def import_sdist(archive: Path, tree_dir: Path, pin: Pin, release: Release) -> None:
    """Unpack the sdist's source files into a new git repository, committed at a fixed date."""
    import git

    tree_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=owned_prefix(".import-"), dir=tree_dir.parent))
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
