"""Command line: ``build``, ``diff``, ``check``, ``docs``.

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

from rewriter.errors import PatchsetError, RewriterError, StaleError, UsageError
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
    from rewriter.build import apply_patchsets

    applied = apply_patchsets(_paths(args), _upstream(args), ui)
    for patch in applied.patchsets.series():
        print(f"{patch.version}  {patch.id:40s} {applied.result.patch_status(patch)}")
    return 0


def cmd_docs(args: argparse.Namespace, ui: UI) -> int:
    from rewriter.emit.docs import documents, stale, write
    from rewriter.patchset.loader import load_patchsets

    with ui.task("rendering patch notes, the flag registry and the operations table"):
        docs = documents(load_patchsets(_paths(args).patchsets), Path(args.root))
        if not args.check:
            write(docs)
    old = stale(docs)
    if old:
        raise StaleError("; ".join(f"{path} is stale" for path in old)
                         + ": run `python -m rewriter docs` and commit the result")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, UI], int]] = {
    "build": cmd_build,
    "diff": cmd_diff,
    "check": cmd_check,
    "docs": cmd_docs,
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
    docs = sub.add_parser("docs", parents=[common], help="render docs/patch-notes.md, configs/flags.yaml and the operations table")
    docs.add_argument("--check", action="store_true", help="fail if any of them is stale")
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
