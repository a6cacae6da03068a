"""Build the wheel with upstream's own build backend, reproducibly, and cache the helper by content.

``pip wheel --no-build-isolation`` runs upstream's ``setup.py`` (setuptools) on the staging tree,
with the target interpreter (:mod:`rewriter.emit.interpreter`: the rewriter's own, or ``--python``)
and that interpreter's setuptools, wheel and pybind11.

Reproducibility: ``SOURCE_DATE_EPOCH`` fixes zip times, and the compiled dataset helper must not
depend on where things are. The compile gets no debug information (``-g0``, placed last so that
a ``-g`` from the environment or an older setuptools' C flags loses) and ``-ffile-prefix-map``
for the staging tree, the environment's prefixes and pybind11's include folder, so neither the
random staging path nor the venv path reaches the bytes (DWARF or ``__FILE__``). What still
changes the bytes (compiler, linker, Python ABI, flags from the environment, pybind11 version)
is in :func:`build_environment`, which keys the helper and the wheel caches.

Speed: the helper (``helpers_cpp``) is compiled by that same backend once per key and reused:
it is placed where setuptools' ``build_ext`` looks, newer than its source, so the backend skips
the up-to-date extension.

The ``pip wheel`` child runs in its own session behind a small guard that kills the whole group
(pip, the backend, the compiler) when the rewriter dies, however it dies.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from rewriter.cache import FileCache, cache_key
from rewriter.emit.interpreter import Interpreter, interpreter
from rewriter.errors import EmitError

SOURCE_DATE_EPOCH = "1700000000"
HELPER_SOURCE = "megatron/core/datasets/helpers.cpp"
#: compiler flags of the environment that reach the compile or link line (setuptools appends them)
FLAG_ENV = ("CC", "CXX", "CPPFLAGS", "LDFLAGS", "LDSHARED", "LDCXXSHARED", "CFLAGS", "CXXFLAGS", "AR", "ARFLAGS")

# Runs `argv[2:]` as the leader of a new process group and kills that group when its parent (the
# rewriter) dies: Linux sends it SIGTERM then (PR_SET_PDEATHSIG).
_GUARD = r"""
import ctypes, os, signal, subprocess, sys
def die(*_):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, die)
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    die()
sys.exit(subprocess.call(sys.argv[2:]))
"""


def _build_lib(staging: Path, python: Interpreter) -> Path:
    """Where setuptools' build_ext writes extensions for ``python``."""
    return staging / "build" / f"lib.{python.platform}-{python.cache_tag}"


def _helper_relpath(python: Interpreter) -> str:
    return "megatron/core/datasets/helpers_cpp" + (python.ext_suffix or ".so")


@lru_cache(maxsize=8)
def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([*shlex.split(cxx), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"


def build_environment(python: Interpreter | None = None) -> str:
    """Everything outside the staging tree that changes the wheel's bytes, as stable text.

    The target Python's ABI and build tools (setuptools, wheel, pybind11: they run in it), the
    compiler's and linker's commands and versions, and compiler flags from the environment.
    """
    python = python or interpreter()
    cxx = os.environ.get("CXX") or python.config.get("CXX") or "c++"
    version = _compiler_version(cxx)
    facts = {
        "python": python.version,
        "abi": [python.cache_tag, python.ext_suffix, python.platform],
        "config": python.config,
        "tools": python.tools,
        "env": {k: os.environ[k] for k in FLAG_ENV if k in os.environ},
        "compiler": version.strip(),
    }
    return json.dumps(facts, sort_keys=True)


def helper_key(staging: Path, python: Interpreter | None = None) -> str:
    """Cache key of the compiled helper: its source and the build environment."""
    source = staging / HELPER_SOURCE
    return cache_key("helper", source.read_bytes() if source.is_file() else b"", build_environment(python))


def build_wheel(staging: Path, out_dir: Path, helpers: FileCache, python: Interpreter | None = None) -> Path:
    """Build a wheel for ``python`` (default: this interpreter) from ``staging`` into ``out_dir``; return its path.

    ``staging.parent`` is a temporary folder the caller owns and removes: pip's own temporary
    files go there too, so a killed build leaves one folder, which the next run removes.
    """
    python = python or interpreter()
    key = helper_key(staging, python)
    cached = helpers.get(key)
    if cached is not None:
        target = _build_lib(staging, python) / _helper_relpath(python)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, target)  # mtime now: newer than its source
        target.chmod(0o755)  # as the linker writes it under umask 022 (see _run_pip_wheel)
    scratch = Path(tempfile.mkdtemp(prefix="wheel-", dir=staging.parent))  # inside the caller's owned folder
    _run_pip_wheel(staging, scratch, python)
    wheels = list((scratch / "out").glob("*.whl"))
    if len(wheels) != 1:
        raise EmitError(f"the build produced {len(wheels)} wheels in {scratch / 'out'}, expected one")
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / wheels[0].name
    shutil.copyfile(wheels[0], wheel)
    built_helper = _build_lib(staging, python) / _helper_relpath(python)
    if cached is None and built_helper.is_file():
        helpers.put(key, built_helper)
    return wheel


def compile_flags(staging: Path, python: Interpreter) -> str:
    """Flags appended to every compile: no debug info, and no path of this machine or this build."""
    maps = {str(staging): "."}
    for path, name in ((python.prefix, "/python-env"), (python.base_prefix, "/python"),
                       (python.include, "/python-include"), (python.pybind11_include, "/pybind11-include")):
        if path:
            maps.setdefault(path, name)
    flags = ["-g0"] + [f"-ffile-prefix-map={src}={dst}" for src, dst in sorted(maps.items(), key=lambda kv: len(kv[0]))]
    return " ".join(shlex.quote(f) for f in flags)


def _run_pip_wheel(staging: Path, scratch: Path, python: Interpreter) -> None:
    """``pip wheel`` of ``staging`` run by ``python`` into ``scratch/out`` (pip's temporary files in ``scratch/tmp``)."""
    out, tmp, bindir = scratch / "out", scratch / "tmp", scratch / "bin"
    tmp.mkdir(parents=True, exist_ok=True)
    bindir.mkdir()
    # upstream's setup.py runs `python3 -m pybind11` by name: that must be the target interpreter
    # (a wrapper, not a symlink: a symlink to a venv's python would not see the venv)
    shim = bindir / "python3"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(python.executable)} "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    env = dict(os.environ)
    fixed = compile_flags(staging, python)
    env.update(
        SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH,
        PYTHONHASHSEED="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        TMPDIR=str(tmp),
        PATH=os.pathsep.join([str(bindir), os.path.dirname(python.executable), env.get("PATH", "")]),
        CXXFLAGS=f"-DNDEBUG -fwrapv -O3 -Wall {fixed}",
        CFLAGS=f"-DNDEBUG -fwrapv -O3 -Wall {fixed}",
        # setuptools appends CPPFLAGS last to compile lines (old versions compile C++ with CFLAGS)
        CPPFLAGS=f"{os.environ.get('CPPFLAGS', '')} {fixed}".strip(),
    )
    cmd = [python.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "-w", str(out), str(staging) + os.sep]
    output, returncode = run_guarded(cmd, env)
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise EmitError(f"wheel build failed (pip wheel exit {returncode}); last lines:\n{tail}")


def run_guarded(cmd: list[str], env: dict[str, str]) -> tuple[str, int]:
    """Run ``cmd`` (umask 022: file modes end up in the wheel) so that it dies with us."""
    proc = subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid()), *cmd], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: os.umask(0o022))
    try:
        output, _ = proc.communicate()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    return output, proc.returncode
