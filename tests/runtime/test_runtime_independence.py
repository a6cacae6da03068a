"""primus_runtime runs without the compiler: a training image has neither it nor its dependencies.

Each test imports every primus_runtime module in a fresh interpreter where ``rewriter`` and the
compiler-only dependencies cannot be imported (a ``sys.meta_path`` finder refuses them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# rewriter and what only the compiler needs (primus-runtime/pyproject.toml lists none of them).
# setuptools is not blocked: torch.utils.cpp_extension, which megatron-core imports, imports it;
# what the runtime must not need is the compiler's setuptools<80 pin (checked on the wheel below).
COMPILER_ONLY = ("rewriter", "libcst", "git", "jinja2", "pybind11")

SCRIPT = """
import importlib, json, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))

class RefuseCompiler:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked: the runtime must not need it", name=name)
        return None

sys.meta_path.insert(0, RefuseCompiler())
import primus_runtime

failed = {}
for module in pkgutil.walk_packages(primus_runtime.__path__, "primus_runtime."):
    if module.name.endswith(".__main__"):  # runs the command line
        continue
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = [type(exc).__name__, getattr(exc, "name", None), str(exc)]
print(json.dumps({"failed": failed, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def import_everything(*paths: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (*paths, REPO)), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(COMPILER_ONLY)], env=env, cwd=REPO,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def test_runtime_modules_import_without_the_compiler() -> None:
    """Without megatron-core on the path, the only modules that may fail are those that need it."""
    result = import_everything()
    assert result["loaded"] == []
    for name, (kind, missing, message) in result["failed"].items():
        assert kind == "ModuleNotFoundError" and missing == "megatron", f"{name}: {message}"


@pytest.mark.slow
def test_runtime_modules_import_without_the_compiler_beside_megatron(cpu_trees: dict[str, Path]) -> None:
    """With a built megatron-core tree importable, every module imports."""
    result = import_everything(cpu_trees["patched"])
    assert result == {"failed": {}, "loaded": []}


def test_runtime_distribution_declares_no_compiler_dependency() -> None:
    """primus-runtime/pyproject.toml ships the runtime and its YAML helper, and none of the compiler."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "primus-runtime" / "pyproject.toml").read_text(encoding="utf-8"))
    names = {dep.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
             for dep in project["project"]["dependencies"]}
    assert names.isdisjoint({"libcst", "gitpython", "jinja2", "setuptools", "pybind11", "wheel"}), names
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["primus_runtime*", "primus_yaml*"]


@pytest.mark.slow
def test_runtime_wheel_ships_the_runtime_alone(tmp_path: Path) -> None:
    """The primus-runtime wheel holds primus_runtime and primus_yaml, and requires nothing of the compiler."""
    import shutil
    import zipfile

    tree = tmp_path / "tree"  # a copy, so the in-tree build leaves nothing in the checkout
    for name in ("primus_runtime", "primus_yaml", "primus-runtime"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "build"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "out"), str(tree / "primus-runtime")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "out").glob("primus_runtime-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"primus_runtime", "primus_yaml"}
    assert "primus_runtime/config/registry.py" in names
    required = [line.split(":", 1)[1].strip().lower() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert required and not any(r.startswith(("libcst", "gitpython", "jinja2", "setuptools", "pybind11"))
                                for r in required), required
