"""Build-speed benchmark: prints numbers, asserts nothing.

Measures, on this machine, with the pinned upstream already downloaded (its download is not
timed):

* reference: libcst (and ``ast``) parsing every .py file of the upstream tree, the cost a tool
  that re-parses everything would pay;
* cold: trees, diffs and manifests of all patchset versions with no cache (``--no-wheel``);
* cold wheels: every version's wheel, with the compiled dataset helper already cached;
* helper compile: one wheel with no cache at all (upstream's g++ build of helpers.cpp);
* unchanged rebuild: everything again (all versions, wheels included) with a warm cache.

Each CLI measurement is a fresh ``python -m rewriter`` process (interpreter start included),
best of ``--repeat`` runs.

usage: python benchmarks/bench_build.py [--repeat N]
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cache: Path | None) -> float:
    cmd = [sys.executable, "-m", "rewriter", *args, "-q", "--root", str(REPO)]
    cmd += ["--build-cache", str(cache)] if cache else ["--no-cache"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def best(repeat: int, fn) -> float:
    return min(fn() for _ in range(repeat))


def parse_all(root: Path) -> tuple[float, float, int, int]:
    import libcst

    files = sorted((root / "megatron" / "core").rglob("*.py"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    start = time.perf_counter()
    for text in texts:
        libcst.parse_module(text)
    cst_time = time.perf_counter() - start
    start = time.perf_counter()
    for text in texts:
        ast.parse(text)
    return cst_time, time.perf_counter() - start, len(files), sum(t.count("\n") for t in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from rewriter.build import Paths, Upstream, apply_patchsets
    from rewriter.ui import UI
    from rewriter.upstream import default_cache_dir, load_pin

    paths = Paths(REPO / "patchsets", REPO / "vendor" / "upstream.yaml", default_cache_dir(REPO), None)
    applied = apply_patchsets(paths, Upstream(load_pin(paths.pin).pinned.commit), UI(quiet=True))
    edits = len(applied.result.reports)
    touched = len(applied.result.files)
    versions = len(applied.patchsets.versions)

    cst_time, ast_time, nfiles, nlines = parse_all(applied.upstream.root)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    out = str(work / "out")
    try:
        cold = best(args.repeat, lambda: cli("build", "--all-versions", "--no-wheel", "--out", out, cache=None))

        helper_only = work / "helper-cache"
        cli("build", "--patchset", applied.patchsets.newest(), "--out", out, cache=helper_only)  # compiles once

        def cold_wheels() -> float:
            shutil.rmtree(helper_only / "wheels", ignore_errors=True)
            shutil.rmtree(helper_only / "engine", ignore_errors=True)
            return cli("build", "--all-versions", "--out", out, cache=helper_only)

        wheels = best(args.repeat, cold_wheels)
        compile_one = best(1, lambda: cli("build", "--patchset", applied.patchsets.newest(), "--out", out, cache=None))

        warm = work / "warm-cache"
        cli("build", "--all-versions", "--out", out, cache=warm)
        rebuild = best(args.repeat, lambda: cli("build", "--all-versions", "--out", out, cache=warm))
        rebuild_trees = best(args.repeat, lambda: cli("build", "--all-versions", "--no-wheel", "--out", out, cache=warm))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"upstream: {applied.upstream.label}: {nfiles} .py files, {nlines:,} lines")
    print(f"patchsets: {versions} versions, {len(applied.patchsets.series())} patches, {edits} edits, "
          f"{touched} files touched")
    print()
    print(f"{'measurement':58s} {'seconds':>8s}")
    rows = [
        ("reference: libcst.parse_module of every upstream file", cst_time),
        ("reference: ast.parse of every upstream file", ast_time),
        ("cold: trees + diffs + manifests, all versions (no cache)", cold),
        ("cold wheels: all versions, helper cached (no engine cache)", wheels),
        ("one wheel with no cache at all (compiles helpers.cpp)", compile_one),
        ("unchanged rebuild: trees + diffs + manifests", rebuild_trees),
        ("unchanged rebuild: all versions with wheels", rebuild),
    ]
    for name, value in rows:
        print(f"{name:58s} {value:8.2f}")
    print()
    print(f"cold trees+diffs / full-tree libcst parse: {cold / cst_time:.2f}x "
          f"(target: under 10 s; the whole-tree parse alone takes {cst_time:.1f} s)")
    print(f"unchanged rebuild with wheels: {rebuild:.2f} s (target: under 1 s)")


if __name__ == "__main__":
    main()
