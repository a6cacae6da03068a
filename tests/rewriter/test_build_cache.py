"""The build cache never publishes a damaged entry, and the wheel's bytes depend only on the inputs.

A truncated cached wheel or compiled helper used to be copied into the output with exit 0 (and
the helper then cached inside the next wheel). The helper built in one venv embedded that venv's
pybind11 include path and the random staging folder when debug information was on.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pybind11
import pytest
from sample_upstream import Sample

from rewriter.cli import main

ROOT = Path(__file__).resolve().parents[2]


def build(sample: Sample, out: Path, *extra: str, cache: bool = True) -> int:
    return main(sample.args("build", "--out", str(out), *extra, cache=cache))


def wheel_in(out: Path) -> Path:
    (wheel,) = out.glob("*.whl")
    return wheel


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def damaged_warning(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("warning: build cache entry ") and lines[0].endswith("discarding it and rebuilding")
    return lines[0]


@pytest.mark.slow
def test_truncated_cached_wheel_is_discarded_and_rebuilt(sample: Sample, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert build(sample, tmp_path / "first") == 0
    good = wheel_in(tmp_path / "first").read_bytes()
    (cached,) = (sample.build_cache / "wheels").rglob("*.whl")
    truncate(cached)
    capsys.readouterr()
    assert build(sample, tmp_path / "second") == 0
    damaged_warning(capsys.readouterr().err)
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
    damaged_warning(capsys.readouterr().err)
    assert wheel_in(tmp_path / "second").read_bytes() == good
    helper_works(wheel_in(tmp_path / "second"), tmp_path / "installed")


def venv_at(path: Path) -> Path:
    """A venv at ``path`` that sees this environment's packages but has its own copy of pybind11.

    Its pybind11 include folder, which upstream's setup.py passes to the compiler, is then under
    ``path``, as it is for a user's ``.venv``.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (own,) = path.glob("lib/python*/site-packages")
    (own / "_outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    shutil.copytree(Path(pybind11.__file__).parent, own / "pybind11")
    return path / "bin" / "python"


def build_with(python: Path, sample: Sample, out: Path, cache: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(python), "-m", "rewriter", *sample.args("build", "--out", str(out), cache=cache)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_wheel_bytes_do_not_depend_on_venv_staging_or_cache(helper_sample: Sample, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two venvs at different paths, each build in its own random staging folder, cached or not."""
    monkeypatch.setenv("CPPFLAGS", "-g")  # debug information asked for by the environment
    first = venv_at(tmp_path / "venv")
    second = venv_at(tmp_path / "elsewhere" / "another-venv")
    build_with(first, helper_sample, tmp_path / "a", cache=True)
    build_with(second, helper_sample, tmp_path / "b", cache=False)
    build_with(second, helper_sample, tmp_path / "c", cache=True)
    wheels = [wheel_in(tmp_path / name) for name in "abc"]
    assert wheels[0].name.endswith("-linux_x86_64.whl") or "-cp" in wheels[0].name  # a compiled wheel
    assert wheels[0].read_bytes() == wheels[1].read_bytes() == wheels[2].read_bytes()
    helper = next(n for n in zipfile.ZipFile(wheels[1]).namelist() if "helpers_cpp" in n)
    compiled = zipfile.ZipFile(wheels[1]).read(helper)
    for path in (tmp_path, Path(pybind11.get_include()).parent):
        assert str(path).encode() not in compiled
