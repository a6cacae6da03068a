"""Fault injection: full disks, kill -9 at every build step, damaged cache entries, racing builds.

Whatever happens to a build, the next one succeeds and publishes a good wheel, nothing damaged
is reused, and nothing of the failed run stays behind. Full disks are real ones (a small tmpfs,
mounted where this machine allows it; the tests say so and skip where it does not).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sample_upstream import Sample, leftovers, one_error_line, snapshot

from rewriter.cli import main

ROOT = Path(__file__).resolve().parents[2]
TEMP_NAMES = (".import-", ".clone-", ".tmp-", ".trash-", "primus-staging-")


# -- helpers ----------------------------------------------------------------------------------------


def build(sample: Sample, out: Path, *extra: str, cache: bool = True) -> int:
    return main(sample.args("build", "--out", str(out), *extra, cache=cache))


def wheel_in(out: Path) -> Path:
    (wheel,) = out.glob("*.whl")
    return wheel


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def one_warning(err: str, *needles: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("warning: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def temp_names(*folders: Path) -> list[str]:
    """Temporary names a build makes, anywhere under ``folders`` (there must be none left)."""
    found = []
    for folder in folders:
        if folder.exists():
            found += [str(p) for p in folder.rglob("*") if p.name.startswith(TEMP_NAMES)]
    return found


def _unmount_under(folder: Path) -> None:
    with open("/proc/mounts", encoding="utf-8") as fh:
        points = [line.split()[1] for line in fh]
    for point in sorted(points, key=len, reverse=True):
        if point == str(folder) or point.startswith(str(folder) + "/"):
            subprocess.run(["umount", "-l", point], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``; the test is skipped where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on this machine: {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        _unmount_under(path)


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` until about ``leave`` bytes are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    filler = folder / "filler"
    with filler.open("wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(0, free - leave))
    return filler


def cli_env(tmpdir: Path) -> dict[str, str]:
    """The CLI in a subprocess: this checkout's rewriter, temporary files in ``tmpdir``."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions ``text`` (a build child that outlived its parent)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- truncated cache entries --------------------------------------------------------------------------


@pytest.mark.slow
def test_truncated_cached_wheel_is_discarded_and_rebuilt(sample: Sample, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert build(sample, tmp_path / "first") == 0
    good = wheel_in(tmp_path / "first").read_bytes()
    (cached,) = (sample.build_cache / "wheels").rglob("*.whl")
    truncate(cached)
    capsys.readouterr()
    assert build(sample, tmp_path / "second") == 0
    one_warning(capsys.readouterr().err, "build cache entry", "discarding it and rebuilding")
    assert wheel_in(tmp_path / "second").read_bytes() == good
    assert build(sample, tmp_path / "third") == 0  # the rebuilt entry is good again
    assert capsys.readouterr().err == ""
    assert wheel_in(tmp_path / "third").read_bytes() == good


def helper_works(wheel: Path, where: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(where)
    code = "from megatron.core.datasets import helpers_cpp; assert helpers_cpp.triangle(10) == 55"
    proc = subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_truncated_cached_helper_is_discarded_and_rebuilt(helper_sample: Sample, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    sample = helper_sample
    assert build(sample, tmp_path / "first") == 0
    good = wheel_in(tmp_path / "first").read_bytes()
    shutil.rmtree(sample.build_cache / "wheels")  # so that the next build compiles, with the cached helper
    (helper,) = (sample.build_cache / "helpers").rglob("*.so")
    truncate(helper)
    capsys.readouterr()
    assert build(sample, tmp_path / "second") == 0
    one_warning(capsys.readouterr().err, "build cache entry", "discarding it and rebuilding")
    assert wheel_in(tmp_path / "second").read_bytes() == good
    helper_works(wheel_in(tmp_path / "second"), tmp_path / "installed")


def test_truncated_engine_entries_are_recomputed(sample: Sample, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert build(sample, tmp_path / "first", "--no-wheel") == 0
    entries = sorted((sample.build_cache / "engine").rglob("*.json"))
    for entry in entries:
        truncate(entry)
    assert build(sample, tmp_path / "second", "--no-wheel") == 0
    assert len(capsys.readouterr().err.splitlines()) == len(entries)
    assert snapshot(tmp_path / "second") == snapshot(tmp_path / "first")


# -- full disks -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_build_cache_never_publishes_a_damaged_entry(helper_sample: Sample, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: the disk fills while the helper is cached; after space is freed, all is well."""
    sample = helper_sample
    assert build(sample, tmp_path / "reference", cache=False) == 0
    good = wheel_in(tmp_path / "reference").read_bytes()
    with tmpfs(tmp_path / "small-disk", "2m") as disk:
        sample.build_cache = disk / "cache"
        filler = fill(disk, leave=48 * 1024)  # room for the engine entries, not for the helper
        capsys.readouterr()
        assert build(sample, tmp_path / "first") == 0
        err = capsys.readouterr().err
        assert "No space left on device" in err and "Traceback" not in err, err
        assert wheel_in(tmp_path / "first").read_bytes() == good
        filler.unlink()
        for name in ("second", "third"):
            assert build(sample, tmp_path / name) == 0
            assert capsys.readouterr().err == ""  # nothing damaged was stored, so nothing is discarded
            assert wheel_in(tmp_path / name).read_bytes() == good
        assert temp_names(disk) == []
    helper_works(wheel_in(tmp_path / "third"), tmp_path / "installed")


def test_full_output_disk_is_one_line_and_leaves_nothing(sample: Sample, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with tmpfs(tmp_path / "small-disk", "256k") as disk:
        out = disk / "out"
        fill(disk, leave=0)
        assert build(sample, out, "--no-wheel") == 4
        one_error_line(capsys.readouterr().err, "No space left on device", "previous output is unchanged")
        assert not out.exists()
        assert leftovers(out) == []


# -- kill -9 at each step ------------------------------------------------------------------------------

STEPS = ["resolving upstream", "applying patches", "writing diffs", "building wheel", "moving outputs"]


def kill_at(cmd: list[str], env: dict[str, str], step: str, sig: int = signal.SIGKILL) -> int:
    """Start the CLI, send ``sig`` once it reports ``step`` (for the wheel: once pip runs); its exit status."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(f"==> {step}"):
            break
    else:
        pytest.fail(f"the build ended (exit {proc.wait()}) before step {step!r}")
    if step == "building wheel":
        deadline = time.monotonic() + 120
        while not processes_mentioning(env["TMPDIR"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    proc.send_signal(sig)
    status = proc.wait()
    proc.stderr.close()
    return status


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_step_then_rebuild(sample: Sample, tmp_path: Path, step: str) -> None:
    env = cli_env(tmp_path / "tmp")
    base = [sys.executable, "-m", "rewriter"]
    kill_at([*base, *[a for a in sample.args("build", "--out", str(sample.out)) if a != "-q"]], env, step)
    deadline = time.monotonic() + 2  # the killed build's children die with it, not when done
    while processes_mentioning(env["TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(env["TMPDIR"]) == []

    proc = subprocess.run([*base, *sample.args("build", "--out", str(sample.out))], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(wheel_in(sample.out)) as whl:
        assert whl.testzip() is None
    assert leftovers(sample.out) == []
    assert temp_names(sample.cache, sample.build_cache) == []
    assert list((tmp_path / "tmp").iterdir()) == []  # pip's temporary files included


@pytest.mark.slow
def test_sigterm_while_pip_runs_removes_everything_at_once(sample: Sample, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "tmp")
    cmd = [sys.executable, "-m", "rewriter", *[a for a in sample.args("build", "--out", str(sample.out)) if a != "-q"]]
    assert kill_at(cmd, env, "building wheel", signal.SIGTERM) == 128 + signal.SIGTERM
    assert processes_mentioning(env["TMPDIR"]) == []  # pip's group was killed before the CLI exited
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not sample.out.exists() and leftovers(sample.out) == []


# -- leftovers of killed builds are removed by the next run -------------------------------------------------


def test_stale_leftovers_are_removed_and_live_ones_kept(sample: Sample, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    dead = dead_pid()
    out = sample.out
    out.parent.mkdir(parents=True)
    stale = [
        out.parent / f".{out.name}-partial-{dead}-abc123",
        out.parent / f".{out.name}-old-{dead}-abc123",
        temp / f"primus-staging-{dead}-xyz",
        sample.cache / "pypi" / f".import-{dead}-q1",
        sample.build_cache / "wheels" / f".tmp-{dead}-w1",
        sample.build_cache / "engine" / "ab" / f".tmp-{dead}-e1",
    ]
    old_unowned = out.parent / f".{out.name}-partial-zz9"  # older naming, no pid: goes after an hour
    live = out.parent / f".{out.name}-partial-{os.getpid()}-mine"  # a build still running
    for folder in [*stale, old_unowned, live]:
        (folder / "src").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(old_unowned, (two_hours_ago, two_hours_ago))
    assert build(sample, out) == 0
    assert [p for p in [*stale, old_unowned] if p.exists()] == []
    assert live.is_dir()


# -- an --out that cannot be replaced -------------------------------------------------------------------


def test_read_only_output_is_refused_before_anything_is_replaced(sample: Sample, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only folder inside --out (a read-only bind mount: root ignores file modes)."""
    assert build(sample, sample.out, "--no-wheel") == 0
    locked = sample.out / "diffs"
    proc = subprocess.run(["mount", "--bind", str(locked), str(locked)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount on this machine: {proc.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(locked)], check=True, capture_output=True)
        before = snapshot(sample.out)
        capsys.readouterr()
        assert build(sample, sample.out, "--no-wheel") == 4
        one_error_line(capsys.readouterr().err, f"output directory {sample.out} cannot be replaced", "read-only")
        assert snapshot(sample.out) == before
        assert leftovers(sample.out) == []
    finally:
        _unmount_under(tmp_path)


# -- racing first builds -------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_first_builds_at_once_both_publish_the_same_wheel(sample: Sample, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "tmp")
    outs = [tmp_path / "a" / "out", tmp_path / "b" / "out"]
    procs = [subprocess.Popen([sys.executable, "-m", "rewriter", *sample.args("build", "--out", str(out))],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for out in outs]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert wheel_in(outs[0]).read_bytes() == wheel_in(outs[1]).read_bytes()
    assert temp_names(tmp_path / "tmp", sample.cache, sample.build_cache) == []
