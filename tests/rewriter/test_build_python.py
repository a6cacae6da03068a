"""``build --python PATH``: the wheel (with its compiled helper) is built by and for that interpreter.

Where this machine has a Python of another minor version (``PRIMUS_TEST_OTHER_PYTHON``, a
``python3.X`` on PATH, or a pyenv version), the target is a venv of it, so the wheel's tags and
the helper's ABI differ from the rewriter's own; otherwise a venv of this Python's base install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sample_upstream import Sample, assert_untouched, one_error_line

from rewriter.cli import main
from rewriter.emit.interpreter import INSTALL_HINT


def runs(python: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a working interpreter at ``python``, else ``None``."""
    try:
        out = subprocess.run([python, "-c", "import sys, venv; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return tuple(map(int, out.stdout.split())) if out.returncode == 0 else None  # type: ignore[return-value]


def other_python() -> str:
    """An interpreter of another minor version if there is one, else this one's base install."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [os.environ.get("PRIMUS_TEST_OTHER_PYTHON", "")]
    candidates += [f"python3.{minor}" for minor in range(10, 15)]
    candidates += sorted(str(p) for p in pyenv.glob("3.*/bin/python3"))
    for candidate in filter(None, candidates):
        version = runs(candidate)
        if version and version >= (3, 10) and version != sys.version_info[:2]:
            return candidate
    return str(Path(sys.base_prefix) / "bin" / "python3")


def make_venv(base: str, path: Path, packages: bool) -> Path:
    subprocess.run([base, "-m", "venv", *([] if packages else ["--without-pip"]), str(path)], check=True)
    python = path / "bin" / "python"
    if packages:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "setuptools>=64,<80", "wheel", "pybind11"],
                       check=True, timeout=600)
    return python


def test_missing_interpreter_is_one_line(helper_sample: Sample, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no" / "python"
    assert main(helper_sample.args("build", "--out", str(helper_sample.out), "--python", str(missing))) == 4
    one_error_line(capsys.readouterr().err, f"--python {missing}: no such executable")
    assert_untouched(helper_sample.out)


@pytest.mark.slow
def test_interpreter_without_build_tools_is_refused_before_any_work(helper_sample: Sample, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bare = make_venv(sys.executable, tmp_path / "bare", packages=False)
    assert main(helper_sample.args("build", "--out", str(helper_sample.out), "--python", str(bare))) == 4
    line = one_error_line(capsys.readouterr().err, f"--python {bare} cannot build the wheel: it lacks pip, setuptools")
    assert line.endswith(f"{bare} -m pip install {INSTALL_HINT}")
    assert_untouched(helper_sample.out)
    assert not helper_sample.cache.exists()  # refused before resolving the upstream


@pytest.mark.slow
def test_wheel_for_another_interpreter(helper_sample: Sample, tmp_path: Path) -> None:
    target = make_venv(other_python(), tmp_path / "target", packages=True)
    facts = json.loads(subprocess.run(
        [str(target), "-c", "import json, sys, sysconfig; from importlib import metadata; print(json.dumps("
         "[sys.implementation.cache_tag, sysconfig.get_config_var('EXT_SUFFIX'), metadata.version('setuptools')]))"],
        capture_output=True, text=True, check=True).stdout)
    cache_tag, ext_suffix, setuptools_version = facts
    abi = "cp" + cache_tag.removeprefix("cpython-")
    out = tmp_path / "out"
    assert main(helper_sample.args("build", "-q", "--out", str(out), "--python", str(target))) == 0
    (wheel,) = out.glob("*.whl")
    assert wheel.name.endswith(f"-{abi}-{abi}-linux_x86_64.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert f"megatron/core/datasets/helpers_cpp{ext_suffix}" in names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tools"]["setuptools"] == setuptools_version  # the target's build tools made it
    # the target installs and runs the compiled helper
    subprocess.run([str(target), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    run = subprocess.run([str(target), "-c", "from megatron.core.datasets import helpers_cpp; print(helpers_cpp.triangle(4))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.strip() == "10", run.stderr
    # built for this interpreter instead, the wheel differs (another ABI) when the versions differ
    if cache_tag != sys.implementation.cache_tag:
        assert main(helper_sample.args("build", "-q", "--out", str(tmp_path / "own"))) == 0
        (own,) = (tmp_path / "own").glob("*.whl")
        assert own.name != wheel.name


@pytest.mark.slow
def test_the_probe_reads_what_the_rewriter_reads_in_process() -> None:
    """The default interpreter is read in-process, another one by the probe: the same facts."""
    from rewriter.emit import interpreter as module

    assert module._probe(sys.executable) == module.interpreter()
