"""Command line: ``build``, ``diff``, ``check``, ``interdiff``, ``docs``, ``releases``, ``matrix``.

Each command is a function returning an exit code; :func:`main` dispatches from a table and
turns a :class:`RewriterError` into one line on stderr and its exit code (see
:mod:`rewriter.errors`). Other exceptions are bugs: exit 123 with the traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rewriter.errors import DriftError, PatchsetError, RewriterError, StaleError, UsageError
from rewriter.flavors import FLAVORS
from rewriter.ui import UI

if TYPE_CHECKING:
    from rewriter.build import Paths, Upstream

BUG_EXIT = 123


def _paths(args: argparse.Namespace) -> Paths:
    from rewriter.build import Paths
    from rewriter.upstream import default_cache_dir

    root = Path(args.root)
    return Paths(
        patchsets=Path(args.patchsets) if args.patchsets else root / "patchsets",
        pin=Path(args.pin) if args.pin else root / "vendor" / "upstream.yaml",
        upstream_cache=Path(args.upstream_cache) if args.upstream_cache else default_cache_dir(root),
        build_cache=None if args.no_cache else (Path(args.build_cache) if args.build_cache else root / "build" / "cache"),
    )


def _upstream(args: argparse.Namespace) -> Upstream:
    from rewriter.build import Upstream

    if args.upstream_release and (args.upstream or args.upstream_repo):
        raise UsageError("--upstream-release names a release by version; do not combine it with --upstream/--upstream-repo")
    if args.allow_dirty and not args.upstream_repo:
        raise UsageError("--allow-dirty is about the --upstream-repo source; it does nothing without --upstream-repo")
    return Upstream(sha=args.upstream, repo=args.upstream_repo, sdist=Path(args.sdist) if args.sdist else None,
                    release=args.upstream_release, allow_dirty=args.allow_dirty)


def cmd_build(args: argparse.Namespace, ui: UI) -> int:
    from rewriter.build import build
    from rewriter.patchset.loader import load_patchsets

    paths = _paths(args)
    names = load_patchsets(paths.patchsets).names()
    if not names:
        raise PatchsetError(f"{paths.patchsets}: no patchset versions to build")
    if args.all_versions:
        versions = names
    else:
        version = args.patchset or names[-1]
        if version not in names:
            raise PatchsetError(f"unknown patchset version {version!r} (known: {', '.join(names)})")
        versions = [version]
    out = build(paths, _upstream(args), Path(args.out), versions, ui, verify=not args.fast,
                wheels=not args.no_wheel, flavor=args.flavor, python=args.python)
    print(out)
    return 0


def cmd_diff(args: argparse.Namespace, ui: UI) -> int:
    from rewriter.build import apply_patchsets

    applied = apply_patchsets(_paths(args), _upstream(args), ui)
    names = applied.patchsets.names()
    if args.version not in names:
        raise PatchsetError(f"unknown patchset version {args.version!r} (known: {', '.join(names)})")
    against = None if args.against == "upstream" else applied.patchsets.previous(args.version)
    sys.stdout.write(applied.diff(args.version, against))
    return 0


def cmd_check(args: argparse.Namespace, ui: UI) -> int:
    """Every patch's verdict on one upstream (a column of ``matrix``); exit 4 if any fails."""
    from rewriter.build import load_inputs
    from rewriter.matrix import PASSING, apply_to_release

    inputs = load_inputs(_paths(args), _upstream(args), ui)
    with ui.task("applying patches and checking the result"):
        verdicts, _ = apply_to_release(inputs.patchsets.series(), inputs.tree, inputs.releases, inputs.cache)
    failing = [v for v in verdicts if v.verdict not in PASSING]
    for v in verdicts:
        print(f"{v.version}  {v.patch:40s} {v.verdict}" + (f"  {v.reason}" if v in failing else ""))
    if failing:
        raise DriftError(
            f"{len(failing)} patch(es) do not build on upstream {inputs.tree.label}: "
            + "; ".join(f"{v.patch}: {v.verdict}: {v.reason}" for v in failing)
            + ". Fix the anchor, limit the edit to the releases it fits (`releases:`) or give a variant "
            "(docs/patchset-format.md)."
        )
    return 0


def cmd_interdiff(args: argparse.Namespace, ui: UI) -> int:
    """Compare the generated change per patch: two upstreams, or this repository at a ref and now."""
    from rewriter.review.interdiff import compare
    from rewriter.review.report import RENDERERS
    from rewriter.review.sides import (
        apply_side,
        generated_diff,
        ref_checkout,
        ref_paths,
        release_label,
        side,
        upstream_of,
    )

    paths = _paths(args)
    if args.from_ref:
        if args.from_upstream or args.to_upstream:
            raise UsageError("--from-ref compares two revisions of the patchsets; do not combine it with --from-upstream/--to-upstream")
        upstream = _upstream(args)
        new = apply_side(paths, upstream, ui)
        new_side = side(new, args.patchset, "work tree")
        with ref_checkout(Path(args.root), args.from_ref, ui.info) as (checkout, sha):
            old = apply_side(ref_paths(paths, Path(args.root), checkout), upstream, ui)
        names = old.applied.patchsets.names()
        old_version = new_side.version if new_side.version in names else names[-1]
        old_side = side(old, old_version, f"{args.from_ref} ({sha[:12]})")
        generated = generated_diff(old.applied, old_version, new.applied, new_side.version)
        diff = compare("ref", old_side, new_side, generated)
    else:
        if not (args.from_upstream and args.to_upstream):
            raise UsageError("interdiff needs --from-upstream A --to-upstream B, or --from-ref REF")
        if args.upstream or args.upstream_release:
            raise UsageError("--from-upstream/--to-upstream name both upstreams; drop --upstream/--upstream-release")
        before = apply_side(paths, upstream_of(args.from_upstream, paths.pin, args.upstream_repo), ui)
        after = apply_side(paths, upstream_of(args.to_upstream, paths.pin, args.upstream_repo), ui)
        diff = compare("upstream", side(before, args.patchset, release_label(before.applied)),
                       side(after, args.patchset, release_label(after.applied)))
    if args.html:
        from rewriter.review.html import write_html

        with ui.task(f"writing the review page {args.html}"):
            write_html(diff, Path(args.html))
    sys.stdout.write(RENDERERS[args.format](diff))
    return 0


def cmd_docs(args: argparse.Namespace, ui: UI) -> int:
    from rewriter.emit.docs import documents, stale, write
    from rewriter.matrix import stale_doc
    from rewriter.patchset.loader import load_patchsets
    from rewriter.upstream import load_pin

    paths = _paths(args)
    with ui.task("rendering patch notes, the flag registry and the operations table"):
        patchsets = load_patchsets(paths.patchsets)
        docs = documents(patchsets, Path(args.root))
        if not args.check:
            write(docs)
    old = stale(docs)
    if old:
        raise StaleError("; ".join(f"{path} is stale" for path in old)
                         + ": run `python -m rewriter docs` and commit the result")
    matrix = stale_doc(Path(args.root), patchsets, load_pin(paths.pin)) if paths.pin.is_file() else ""
    if matrix:
        raise StaleError(matrix)
    return 0


def cmd_releases(args: argparse.Namespace, ui: UI) -> int:
    from rewriter.releases import add_release, format_rows, release_rows
    from rewriter.upstream import load_pin

    paths = _paths(args)
    if args.action == "add":
        with ui.task(f"adding megatron-core {args.version} to {paths.pin}"):
            added = add_release(paths.pin, paths.upstream_cache, args.version, args.commit, args.tag,
                                Path(args.sdist) if args.sdist else None, args.supported, ui.info)
        r = added.release
        state = "added" if added.new else "already listed, verified"
        print(f"{r.version} {state}: tag {r.tag}, commit {r.commit or 'not recorded'}, sdist sha256 {r.sdist_sha256}, "
              f"source {r.source_digest}")
        return 0
    sys.stdout.write(format_rows(release_rows(load_pin(paths.pin), paths.upstream_cache)))
    return 0


def cmd_matrix(args: argparse.Namespace, ui: UI) -> int:
    from rewriter.cache import JsonCache
    from rewriter.matrix import failing_supported, release_matrix, to_json, to_markdown, write_docs
    from rewriter.patchset.loader import load_patchsets
    from rewriter.upstream import load_pin

    paths = _paths(args)
    patchsets = load_patchsets(paths.patchsets)
    version = args.patchset or patchsets.newest()
    if version not in patchsets.names():
        raise PatchsetError(f"unknown patchset version {version!r} (known: {', '.join(patchsets.names())})")
    pin = load_pin(paths.pin)
    versions = args.releases.split(",") if args.releases else [r.version for r in pin.every_release]
    unknown = [v for v in versions if pin.find(v) is None]
    if unknown:
        raise UsageError(f"--releases: {', '.join(unknown)} not in {paths.pin}; add with `python -m rewriter releases add VERSION`")
    cache = JsonCache(paths.build_cache / "matrix" if paths.build_cache else None, ui.warn)
    with ui.task(f"applying {version} to {len(versions)} release(s)"):
        columns = release_matrix(patchsets, version, pin, versions, paths.upstream_cache, cache, ui.info, ui.warn)
    if args.write_docs:
        print(write_docs(Path(args.root), patchsets, version, pin, versions, columns))
    else:
        sys.stdout.write(to_json(version, columns) if args.format == "json" else to_markdown(version, columns))
    failing = failing_supported(columns)
    if failing:
        raise DriftError(f"supported release(s) {', '.join(failing)} do not build with {version}; see the matrix "
                         "(supported: true in the pin file)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, UI], int]] = {
    "build": cmd_build,
    "diff": cmd_diff,
    "check": cmd_check,
    "interdiff": cmd_interdiff,
    "docs": cmd_docs,
    "releases": cmd_releases,
    "matrix": cmd_matrix,
}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=".", help="repository root (default: current directory)")
    common.add_argument("--patchsets", help="patchsets folder (default: ROOT/patchsets)")
    common.add_argument("--pin", help="upstream pin file (default: ROOT/vendor/upstream.yaml)")
    common.add_argument("--upstream-cache", help="upstream cache (default: ROOT/vendor/.cache or $PRIMUS_REWRITER_CACHE)")
    common.add_argument("--build-cache", help="engine and wheel cache (default: ROOT/build/cache)")
    common.add_argument("--no-cache", action="store_true", help="do not read or write the build cache")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    upstream = argparse.ArgumentParser(add_help=False)
    upstream.add_argument("--upstream", metavar="SHA", help="upstream commit, full or unique prefix (default: the pin)")
    upstream.add_argument("--upstream-repo", metavar="URL|PATH", help="resolve SHA with git from this repository")
    upstream.add_argument("--allow-dirty", action="store_true",
                          help="build from a local --upstream-repo with uncommitted changes (its commit is built, not the edits)")
    upstream.add_argument("--sdist", metavar="PATH", help="use this sdist instead of downloading it from PyPI")
    upstream.add_argument("--upstream-release", metavar="VERSION",
                          help="a release of the pin file by PyPI version, e.g. the 0.10.0 drift testbed")

    p = argparse.ArgumentParser(prog="python -m rewriter", description="Apply Primus patchsets to megatron-core.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", parents=[common, upstream], help="build the patched wheel, manifest and diffs")
    which = b.add_mutually_exclusive_group()
    which.add_argument("--patchset", metavar="VERSION", help="patchset version to build (default: newest)")
    which.add_argument("--all-versions", action="store_true", help="build a wheel for every patchset version")
    b.add_argument("--out", default="build/out", help="output folder (default: build/out)")
    b.add_argument("--fast", action="store_true", help="skip the second-pass stability check")
    b.add_argument("--no-wheel", action="store_true", help="write diffs, manifests and report only (for review)")
    b.add_argument("--python", metavar="PATH",
                   help="build the wheel by and for this interpreter (it needs pip, setuptools<80, wheel, pybind11); "
                        "default: the one running the rewriter")
    b.add_argument("--flavor", choices=FLAVORS, default="default",
                   help="cpu-test: route CUDA calls through a device module so tests run on CPU (default: default)")
    d = sub.add_parser("diff", parents=[common, upstream], help="print the diff of one patchset version")
    d.add_argument("version")
    d.add_argument("--against", choices=("upstream", "previous"), default="previous")
    sub.add_parser("check", parents=[common, upstream], help="validate patchsets and anchors, build nothing")
    i = sub.add_parser("interdiff", parents=[common, upstream],
                       help="per patch, how the generated change differs between two upstreams or two revisions")
    i.add_argument("--from-upstream", metavar="A", help="old upstream: a release of the pin file (0.16.0) or a sha")
    i.add_argument("--to-upstream", metavar="B", help="new upstream: a release of the pin file (0.16.1) or a sha")
    i.add_argument("--from-ref", metavar="GIT_REF",
                   help="compare the patchsets and pin at this ref of the repository with the work tree's")
    i.add_argument("--patchset", metavar="VERSION", help="patchset version to compare (default: newest)")
    i.add_argument("--format", choices=("text", "md", "json"), default="text",
                   help="what to print: text, md (a CI job summary) or json (default: text)")
    i.add_argument("--html", metavar="OUT", help="also write a self-contained HTML review page")
    docs = sub.add_parser("docs", parents=[common], help="render docs/patch-notes.md, configs/flags.yaml and the operations table")
    docs.add_argument("--check", action="store_true", help="fail if any of them is stale")
    rel = sub.add_parser("releases", help="list the upstream releases of the pin file, or add one")
    actions = rel.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="every release: kind, supported, tag, commit, cached here")
    add = actions.add_parser("add", parents=[common], help="download a release's sdist and record it in the pin file")
    add.add_argument("version", help="the PyPI version, e.g. 0.15.3")
    add.add_argument("--commit", metavar="SHA", help="the full git sha of the release's tag (then --upstream SHA builds it)")
    add.add_argument("--tag", help="the release's git tag (default: core_vVERSION)")
    add.add_argument("--sdist", metavar="PATH", help="use this sdist instead of downloading it")
    add.add_argument("--supported", action="store_true", help="mark it supported: `matrix` fails when it does not build")
    m = sub.add_parser("matrix", parents=[common], help="every patch x release with its verdict and reason")
    m.add_argument("--releases", metavar="V1,V2", help="comma-separated releases (default: every release of the pin file)")
    m.add_argument("--patchset", metavar="VERSION", help="patchset version (default: newest)")
    m.add_argument("--format", choices=("md", "json"), default="md")
    m.add_argument("--write-docs", action="store_true", help="write the table into docs/release-matrix.md")
    return p


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary outputs are removed and the build child is killed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ui = UI(quiet=args.quiet)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if on_main_thread else None
    try:
        return _run(args, ui)
    finally:
        if on_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, ui: UI) -> int:
    try:
        return COMMANDS[args.command](args, ui)
    except RewriterError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: keep the traceback
        traceback.print_exc()
        return BUG_EXIT
