"""Build the wheel with upstream's own build backend, reproducibly, and cache it by content.

``pip wheel --no-build-isolation`` runs upstream's ``setup.py`` (setuptools) on the staging tree.
Reproducibility: ``SOURCE_DATE_EPOCH`` fixes zip times, ``-ffile-prefix-map`` keeps the build
path out of the compiled helper, and the staging tree's own bytes decide everything else.

Speed: the dataset helper (``helpers_cpp``) is compiled by that same backend once per content of
``helpers.cpp`` and reused: it is placed where setuptools' ``build_ext`` looks, newer than its
source, so the backend skips the up-to-date extension. (Whole wheels are cached by the caller,
keyed by the build's inputs.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from rewriter.errors import EmitError

SOURCE_DATE_EPOCH = "1700000000"
HELPER_SOURCE = "megatron/core/datasets/helpers.cpp"


def _build_lib(staging: Path) -> Path:
    """Where setuptools' build_ext writes extensions for this interpreter."""
    return staging / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"


def _helper_relpath() -> str:
    return "megatron/core/datasets/helpers_cpp" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def build_wheel(staging: Path, out_dir: Path, cache_dir: Path | None) -> Path:
    """Build a wheel from ``staging`` into ``out_dir``; return its path."""
    helper_key = _helper_key(staging)
    helper_cache = cache_dir / "helpers" / helper_key if cache_dir else None
    if helper_cache is not None and (helper_cache / "helper.so").is_file():
        target = _build_lib(staging) / _helper_relpath()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(helper_cache / "helper.so", target)  # mtime now: newer than its source
        target.chmod(0o755)  # as the linker writes it under umask 022 (see _run_pip_wheel)
    with tempfile.TemporaryDirectory(prefix="wheel-") as tmp:
        _run_pip_wheel(staging, Path(tmp))
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise EmitError(f"the build produced {len(wheels)} wheels in {tmp}, expected one")
        out_dir.mkdir(parents=True, exist_ok=True)
        wheel = out_dir / wheels[0].name
        shutil.copyfile(wheels[0], wheel)
    built_helper = _build_lib(staging) / _helper_relpath()
    if helper_cache is not None and built_helper.is_file() and not (helper_cache / "helper.so").is_file():
        helper_cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built_helper, helper_cache / "helper.so")
    return wheel


def _helper_key(staging: Path) -> str:
    h = hashlib.sha256((staging / HELPER_SOURCE).read_bytes() if (staging / HELPER_SOURCE).is_file() else b"")
    h.update((sys.version + (sysconfig.get_config_var("CXX") or "") + os.environ.get("CXX", "")).encode())
    return h.hexdigest()


def _run_pip_wheel(staging: Path, out: Path) -> None:
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(
        SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH,
        PYTHONHASHSEED="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        # upstream's setup.py runs `python3 -m pybind11` by name: make that our interpreter
        PATH=bindir + os.pathsep + env.get("PATH", ""),
        CXXFLAGS=f"-DNDEBUG -fwrapv -ffile-prefix-map={staging}=.",
    )
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "-w", str(out), str(staging) + os.sep]
    # a fixed umask: file modes end up in the wheel
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=lambda: os.umask(0o022))
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise EmitError(f"wheel build failed (pip wheel exit {proc.returncode}); last lines:\n{tail}")
