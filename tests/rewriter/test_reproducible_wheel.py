"""The wheel's bytes depend only on the inputs: not on the venv path, the staging folder or the cache.

The helper built in one venv embedded that venv's pybind11 include path and the random staging
folder when debug information was on. (Damaged cache entries: see test_fault_injection.py.)
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
