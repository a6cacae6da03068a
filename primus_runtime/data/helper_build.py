"""Compile megatron's C++ dataset helper (``helpers_cpp``) where a run needs it.

Wheels ship the helper; a source checkout of megatron-core does not, and megatron.core's own
``compile_helpers`` runs ``make`` in a folder that has no Makefile in megatron-core. This
compiles ``helpers.cpp`` as the wheel build does (a pybind11 extension: C++17, position
independent, the interpreter's and pybind11's headers) into the name the interpreter imports
(``helpers_cpp`` + ``EXT_SUFFIX``). The runtime does not depend on the compiler package, so this
is its own small function. The result is written under a temporary name and renamed into place,
so a failed or concurrent compile never leaves a half-written module for the next import.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

from primus_runtime.errors import DataError

SOURCE = "helpers.cpp"


class HelperBuildError(DataError):
    """The dataset helper cannot be compiled: the message says what is missing."""


def module_name() -> str:
    return "helpers_cpp" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def compiler() -> list[str]:
    """``$CXX`` when set (it may carry options), else the first C++ compiler on PATH."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [name]
    raise HelperBuildError("no C++ compiler to build megatron's dataset helper: install g++ (or set CXX), or "
                           "install a megatron-core wheel, which ships the helper")


def compile_helper(datasets_dir: Path) -> Path:
    """Compile ``datasets_dir/helpers.cpp`` into ``datasets_dir/helpers_cpp<EXT_SUFFIX>``; return that path."""
    source = datasets_dir / SOURCE
    if not source.is_file():
        raise HelperBuildError(f"{source} is missing: this megatron-core cannot build its dataset helper")
    try:
        import pybind11
    except ImportError:
        raise HelperBuildError("compiling megatron's dataset helper needs pybind11: pip install pybind11") from None
    target = datasets_dir / module_name()
    temporary = datasets_dir / f".{target.name}.{os.getpid()}.tmp"
    command = [*compiler(), "-O3", "-shared", "-std=c++17", "-fPIC", "-fdiagnostics-color=never",
               f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(temporary)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise HelperBuildError(f"cannot run the C++ compiler {command[0]!r} for {source}: {exc.strerror}") from None
    try:
        if proc.returncode != 0:
            lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            detail = lines[-1].strip() if lines else "no output"
            raise HelperBuildError(f"compiling {source} failed ({command[0]} exit {proc.returncode}): {detail}")
        os.replace(temporary, target)
    except OSError as exc:
        raise HelperBuildError(f"cannot write the dataset helper {target}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return target
