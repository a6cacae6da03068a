"""Build the two sides an interdiff compares, from the command line's options.

* Two upstreams (``--from-upstream A --to-upstream B``): one patchset, applied to two releases of
  the pin file (by PyPI version) or two commits (a sha, with ``--upstream-repo`` if the pin file
  does not list it).
* Two revisions of this repository (``--from-ref REF``): the patchsets and pin file at REF,
  checked out with ``git worktree`` in a temporary folder outside the repository, against those
  of the work tree. Both are compiled by the work tree's rewriter, so the difference is what the
  patchset change does to the generated sources, not what a rewriter change does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from rewriter.build import Applied, Paths, Upstream, load_inputs, sources
from rewriter.emit.diffs import unified_diff
from rewriter.errors import PatchsetError, UpstreamError
from rewriter.review.interdiff import Side
from rewriter.stale import clean_stale, owned_prefix
from rewriter.ui import UI
from rewriter.upstream import SHA_RE, load_pin

CHECKOUT_PREFIX = "primus-interdiff-"


def upstream_of(spec: str, pin: Path, repo: str | None) -> Upstream:
    """A release of the pin file by version (``0.16.1``), else a commit (``55ac708…``)."""
    pinned = load_pin(pin)
    if any(r.version == spec for r in (*pinned.releases, *pinned.testbed)):
        return Upstream(release=spec)
    if SHA_RE.match(spec.lower()):
        return Upstream(sha=spec, repo=repo)
    known = ", ".join(r.version for r in (*pinned.releases, *pinned.testbed))
    raise UpstreamError(f"{spec!r} is neither a release of {pin} ({known}) nor a git sha")


@dataclass(frozen=True)
class Verdicts:
    """Patchsets applied to one upstream, with one verdict per patch (failures included)."""

    applied: Applied
    verdicts: dict[str, tuple[str, str]]  # patch id -> (verdict, reason)


def apply_side(paths: Paths, upstream: Upstream, ui: UI) -> Verdicts:
    """Apply every patch without stopping at a failure, the semantic check included (as ``matrix``)."""
    from rewriter.matrix import apply_to_release

    inputs = load_inputs(paths, upstream, ui)
    with ui.task("applying patches (a failing patch is a verdict here)"):
        verdicts, result = apply_to_release(inputs.patchsets.series(), inputs.tree, inputs.releases, inputs.cache)
    return Verdicts(Applied(inputs.patchsets, inputs.tree, result), {v.patch: (v.verdict, v.reason) for v in verdicts})


def side(applied: Verdicts, version: str | None, label: str) -> Side:
    """The comparison side for ``version`` (default: the newest of these patchsets)."""
    names = applied.applied.patchsets.names()
    chosen = version or names[-1]
    if chosen not in names:
        raise PatchsetError(f"unknown patchset version {chosen!r} for {label} (known: {', '.join(names)})")
    ids = tuple(p.id for p in applied.applied.patchsets.series(chosen))
    return Side(label, chosen, ids, applied.applied.result, applied.applied.upstream.read, applied.verdicts)


def release_label(applied: Applied) -> str:
    tree = applied.upstream
    return f"megatron-core {tree.version}" + (f" ({tree.commit[:12]})" if tree.commit else "")


def generated_sources(applied: Applied, version: str) -> dict[str, str]:
    """What the wheel of ``version`` carries besides unchanged upstream files."""
    src = sources(applied, version)
    return {**src.changed, **src.support}


def generated_diff(old: Applied, old_version: str, new: Applied, new_version: str) -> str:
    """The diff of the generated sources; a file a side does not rewrite is that side's upstream file."""
    before, after = generated_sources(old, old_version), generated_sources(new, new_version)
    changes = {path: (before.get(path, old.upstream.read(path)), after.get(path, new.upstream.read(path)))
               for path in sorted(set(before) | set(after))}
    return unified_diff(changes)


@contextmanager
def ref_checkout(root: Path, ref: str, log: Callable[[str], None]) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``root``'s repository at ``ref``, in a temporary folder; (path, full sha).

    The folder is in the system's temp dir, never inside the repository; it is removed (and
    unregistered) afterwards. One that a killed run left is removed by the next (see
    :mod:`rewriter.stale`), and git forgets its registration with ``worktree prune``.
    """
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
        sha = repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}").strip()
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise UpstreamError(f"--from-ref needs a git repository: {root} is not in one") from exc
    except git.GitCommandError as exc:
        raise UpstreamError(f"--from-ref {ref!r}: no such commit, branch or tag in {root}") from exc
    top = Path(repo.working_tree_dir or root)
    clean_stale(Path(tempfile.gettempdir()), (CHECKOUT_PREFIX,), log)
    repo.git.worktree("prune")
    holder = Path(tempfile.mkdtemp(prefix=owned_prefix(CHECKOUT_PREFIX)))
    tree = holder / "tree"
    try:
        repo.git.worktree("add", "--detach", "--quiet", str(tree), sha)
        yield tree / root.resolve().relative_to(top.resolve()), sha
    except git.GitCommandError as exc:
        raise UpstreamError(f"cannot check out {ref!r} into {tree}: {exc.stderr.strip() or exc}") from exc
    finally:
        if tree.exists():
            try:
                repo.git.worktree("remove", "--force", str(tree))
            except git.GitCommandError:
                shutil.rmtree(tree, ignore_errors=True)
                repo.git.worktree("prune")
        shutil.rmtree(holder, ignore_errors=True)
        repo.close()


def ref_paths(paths: Paths, work_root: Path, checkout: Path) -> Paths:
    """The work tree's paths, moved to the checkout where they point inside the repository.

    The caches stay the work tree's: both are content-addressed and shared safely.
    """
    def moved(path: Path) -> Path:
        try:
            return checkout / path.resolve().relative_to(work_root.resolve())
        except ValueError:
            return path  # a folder outside the repository (e.g. a --patchsets elsewhere) is the same on both sides

    return replace(paths, patchsets=moved(paths.patchsets), pin=moved(paths.pin))

