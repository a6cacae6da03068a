"""The Python interpreter a wheel is built for (``build --python PATH``; default: the rewriter's own).

The wheel carries a compiled helper (``helpers_cpp``), so it is for one interpreter: its ABI tag,
extension suffix and platform. Building for another Python means running upstream's build backend
*with that interpreter*, from its own setuptools, wheel and pybind11; everything the build needs
to know about it is read once by running a small stdlib-only probe there.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rewriter.errors import EmitError

#: what upstream's build backend needs in the target interpreter (pip runs it without isolation)
BUILD_REQUIREMENTS = ("pip", "setuptools", "wheel", "pybind11")
INSTALL_HINT = "'setuptools>=64,<80' wheel pybind11"
#: the sysconfig variables that reach the compile and link lines
CONFIG_VARS = ("CC", "CXX", "CFLAGS", "CCSHARED", "LDSHARED", "LDCXXSHARED")

def _facts(config_vars: tuple[str, ...], packages: tuple[str, ...]) -> dict[str, Any]:
    """This interpreter's facts; stdlib only, since it is also sent to run in the target (``_probe``)."""
    import sys
    import sysconfig
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    try:
        import pybind11

        pybind11_include = pybind11.get_include()
    except ImportError:
        pybind11_include = None
    return {
        "version": sys.version,
        "cache_tag": sys.implementation.cache_tag,
        "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
        "platform": sysconfig.get_platform(),
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "include": sysconfig.get_paths()["include"],
        "config": {k: sysconfig.get_config_var(k) for k in config_vars},
        "pybind11_include": pybind11_include,
        "packages": {name: version(name) for name in packages},
    }


#: run by the target interpreter: ``_facts`` itself, printed as JSON
_PROBE = (
    "from __future__ import annotations\nimport json\nfrom typing import Any\n"
    + textwrap.dedent(inspect.getsource(_facts))
    + f"\nprint(json.dumps(_facts({CONFIG_VARS!r}, {BUILD_REQUIREMENTS!r})))\n"
)


@dataclass(frozen=True)
class Interpreter:
    """Facts about one interpreter that decide where setuptools builds and what the wheel holds."""

    executable: str
    version: str
    cache_tag: str  # e.g. cpython-312
    ext_suffix: str  # e.g. .cpython-312-x86_64-linux-gnu.so
    platform: str
    prefix: str
    base_prefix: str
    include: str
    config: dict[str, str | None]
    pybind11_include: str | None
    packages: dict[str, str]  # BUILD_REQUIREMENTS -> version or "absent"

    @property
    def tools(self) -> dict[str, str]:
        """The build tools that shape the wheel (recorded in the manifest)."""
        return {name: self.packages[name] for name in ("setuptools", "wheel", "pybind11")}

    def require_build_tools(self) -> None:
        missing = [name for name in BUILD_REQUIREMENTS if self.packages.get(name) == "absent"]
        if missing:
            raise EmitError(
                f"--python {self.executable} cannot build the wheel: it lacks {', '.join(missing)}; "
                f"install them there: {self.executable} -m pip install {INSTALL_HINT}"
            )


def interpreter(python: str | None = None) -> Interpreter:
    """The interpreter at ``python`` (a path or a name on PATH); ``None``: the one running the rewriter."""
    if python is None:
        return _own()
    found = shutil.which(python) if os.sep not in python else python
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise EmitError(f"--python {python}: no such executable")
    return _probe(os.path.abspath(found))


@lru_cache(maxsize=1)
def _own() -> Interpreter:
    """The rewriter's interpreter, read in-process (no child: an unchanged rebuild stays fast)."""
    return Interpreter(executable=sys.executable, **_facts(CONFIG_VARS, BUILD_REQUIREMENTS))


@lru_cache(maxsize=8)
def _probe(executable: str) -> Interpreter:
    try:
        proc = subprocess.run([executable, "-c", _PROBE],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmitError(f"--python {executable}: cannot run it: {exc}") from exc
    try:
        facts = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        facts = None
    if not isinstance(facts, dict):
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise EmitError(f"--python {executable}: not a Python 3 interpreter this build can use ({last})")
    return Interpreter(executable=executable, **facts)
