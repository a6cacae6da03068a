"""Check out one commit of an upstream git repository into the cache, safely and atomically.

Layout under the upstream cache (every path made absolute and normalised first, so the cwd never matters: git
runs its commands inside the clone, where a relative path would land the checkout *inside* it):

* ``git/<slug>``: a bare clone of the repository (URL or local path), fetched when a commit is
  missing;
* ``trees/<sha>``: a plain clone of that bare clone at exactly ``<sha>`` (objects hard-linked, no
  ``git worktree``: nothing of the checkout is registered in, or placed inside, the bare clone).

Both are built under a temporary name carrying the pid (``.clone-…``, ``.checkout-…``) and renamed
into place when complete, so an interrupted clone or checkout leaves only a leftover that the next
run removes (:mod:`rewriter.stale`). A cached tree that is not a usable repository at ``<sha>`` is
checked out again; one with local modifications is refused (someone edited it: keep their work).

A local source repository with uncommitted changes is refused unless ``allow_dirty``: the build
takes the commit, never the working tree, and a user who edited the tree most likely meant to
build the edits.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rewriter.cache import discard
from rewriter.errors import UpstreamError
from rewriter.stale import clean_stale, owned_prefix

if TYPE_CHECKING:
    import git

Log = Callable[[str], None]
# `user@host:path` (scp-like) and `scheme://…` are remote; anything else names a local folder
_REMOTE_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|[\w.-]+@[\w.-]+:)")
_DIRTY_SHOWN = 3


@dataclass(frozen=True)
class Checkout:
    """A clean checkout of ``commit`` at ``root``, from ``repository`` (absolute when local)."""

    root: Path
    repository: str
    commit: str


def repository_location(repo: str) -> str:
    """A URL as it is; a local path made absolute (so it means the same from the clone's folder)."""
    if _REMOTE_RE.match(repo):
        return repo
    return os.path.abspath(Path(repo).expanduser())


def checkout(repo: str, sha: str, cache_dir: Path, log: Log, warn: Log, allow_dirty: bool = False) -> Checkout:
    """The verified checkout of ``sha`` (full or unique prefix) from ``repo`` (the caller holds the cache lock)."""
    import git

    source = repository_location(repo)
    cache_dir = Path(os.path.abspath(cache_dir))
    _check_source_clean(source, allow_dirty, warn)
    clone_dir = cache_dir / "git" / re.sub(r"[^A-Za-z0-9._-]+", "_", source.rstrip("/"))[-80:]
    try:
        clone = _bare_clone(source, clone_dir, log)
        full = find_commit(clone, sha, source)
        if full is None:
            log(f"fetching {source}")
            clone.git.fetch(source, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
            full = find_commit(clone, sha, source)
        if full is None:
            raise UpstreamError(f"unknown upstream sha {sha!r}: no such commit in {source}")
        tree_dir = cache_dir / "trees" / full
        tree_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(tree_dir.parent, (".checkout-", ".trash-"), log)
        if tree_dir.exists() and not _tree_usable(tree_dir, full, warn):
            discard(tree_dir)
        if not tree_dir.exists():
            _check_out(clone_dir, full, tree_dir, log)
    except git.GitCommandError as exc:
        raise UpstreamError(f"git failed for {source}: {git_failure(exc)}") from exc
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise UpstreamError(f"{exc}: not a usable git repository (damaged cache entry); delete it and rebuild") from exc
    return Checkout(tree_dir, source, full)


def _check_source_clean(source: str, allow_dirty: bool, warn: Log) -> None:
    """Refuse a local source whose working tree differs from its commits (see the module docstring)."""
    import git

    path = Path(source)
    if _REMOTE_RE.match(source) or not path.is_dir():
        return
    try:
        repo = git.Repo(path)
        if repo.bare:
            return
        status = repo.git.status("--porcelain", "--untracked-files=normal")
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError):
        return  # not a repository: cloning it fails with git's own message
    changes = [line for line in str(status).splitlines() if line.strip()]
    if not changes:
        return
    shown = ", ".join(line.strip() for line in changes[:_DIRTY_SHOWN])
    more = f" and {len(changes) - _DIRTY_SHOWN} more" if len(changes) > _DIRTY_SHOWN else ""
    what = f"{source} has uncommitted changes ({shown}{more}); the build takes a commit, not the working tree"
    if not allow_dirty:
        raise UpstreamError(f"--upstream-repo {what}: commit or stash them, or pass --allow-dirty to build the commit anyway")
    warn(f"warning: --upstream-repo {what}; building the commit (--allow-dirty)")


def _bare_clone(source: str, clone_dir: Path, log: Log) -> git.Repo:
    import git

    if not (clone_dir / "HEAD").exists():
        log(f"cloning {source} into {clone_dir}")
        clone_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(clone_dir.parent, (".clone-",), log)
        tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(".clone-"), dir=clone_dir.parent))
        try:
            git.Repo.clone_from(source, tmp, bare=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-cloned folder left in the cache
            raise
        tmp.replace(clone_dir)
    return git.Repo(clone_dir)


def _tree_usable(tree_dir: Path, full: str, warn: Log) -> bool:
    """A clean repository at ``full``: true; damaged or at another commit: warn, false; modified: refuse."""
    import git

    try:
        repo = git.Repo(tree_dir)
        head = repo.head.commit.hexsha
        status = [line for line in str(repo.git.status("--porcelain", "--untracked-files=normal")).splitlines() if line]
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError, ValueError, OSError) as exc:
        warn(f"warning: the upstream checkout {tree_dir} is damaged ({exc.__class__.__name__}); checking it out again")
        return False
    if status and all(line.startswith(" D ") for line in status):
        # files missing and nothing else: a checkout cut short (as `git worktree add` left them)
        warn(f"warning: the upstream checkout {tree_dir} is incomplete ({len(status)} files missing); checking it out again")
        return False
    if status:
        raise UpstreamError(f"{tree_dir}: the upstream checkout has local modifications; delete it and rebuild")
    if head != full:
        warn(f"warning: the upstream checkout {tree_dir} is at {head[:12]}, not {full[:12]}; checking it out again")
        return False
    return True


def _check_out(clone_dir: Path, full: str, tree_dir: Path, log: Log) -> None:
    """Clone ``clone_dir`` under a temporary name, check out ``full``, rename it to ``tree_dir``."""
    import git

    log(f"checking out {full[:12]} into {tree_dir}")
    work = Path(tempfile.mkdtemp(prefix=owned_prefix(".checkout-"), dir=tree_dir.parent))
    try:
        # a local clone copies (hard-links) every object, so any commit of the bare clone is there
        repo = git.Repo.clone_from(str(clone_dir), work / "tree", no_checkout=True)
        repo.git.checkout("-q", "--detach", full)
        repo.close()
        (work / "tree").replace(tree_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def git_failure(exc: Exception) -> str:
    """git's own message on one line (GitPython wraps stderr as ``\\n  stderr: '...'``)."""
    stderr = str(getattr(exc, "stderr", "") or "").strip()
    if stderr.startswith("stderr: '") and stderr.endswith("'"):
        stderr = stderr[len("stderr: '"):-1]
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(lines) or f"{' '.join(map(str, getattr(exc, 'command', [])))} exited with {getattr(exc, 'status', '?')}"


def find_commit(repo: git.Repo, sha: str, url: str) -> str | None:
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
