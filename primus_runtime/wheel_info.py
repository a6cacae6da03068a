"""What the installed megatron-core is: upstream, or a primus-rewriter build (and which).

A patched wheel carries ``megatron.core._primus`` with its manifest; an unpatched one does not.
The runtime checks configured flags against this before doing any heavy work.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from primus_runtime.errors import PrimusRuntimeError


@dataclass(frozen=True)
class WheelInfo:
    version: str
    patched: bool
    manifest: dict[str, Any] | None

    @property
    def patchset_version(self) -> str | None:
        return self.manifest["patchset"]["version"] if self.manifest else None

    @property
    def flags(self) -> dict[str, dict[str, Any]]:
        """Every flag the wheel carries, by name."""
        return {f["name"]: f for f in self.manifest["flags"]} if self.manifest else {}


def installed_megatron_core() -> WheelInfo:
    """Inspect the megatron-core importable in this environment without importing torch.

    Looks where ``import megatron.core`` would look (an installed wheel, or a source tree on
    ``PYTHONPATH``) and reads the manifest a primus-rewriter build carries. The version is the
    distribution's where one is installed, else the manifest's, else ``package_info.py``'s.
    """
    package = megatron_core_package()
    manifest = read_manifest(package / "_primus" / "manifest.json")
    return WheelInfo(version=_version(package, manifest), patched=manifest is not None, manifest=manifest)


def megatron_core_package() -> Path:
    """The folder ``import megatron.core`` would load, found without importing it."""
    try:
        spec = importlib.util.find_spec("megatron.core")
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MegatronCoreMissing(
            "megatron-core is not importable: install the patched wheel (python -m rewriter build; "
            "pip install build/out/megatron_core-*.whl) or upstream megatron-core"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A patched wheel's manifest (None for an unpatched megatron-core), with the keys the runtime reads."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WheelManifestError(f"{path}: unreadable ({type(exc).__name__}: {exc}); the installed megatron-core "
                                 f"is damaged: reinstall its wheel") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise WheelManifestError(f"{path}: {problem}; the installed megatron-core is damaged: reinstall its wheel")
    return manifest


def _manifest_problem(manifest: object) -> str | None:
    if not isinstance(manifest, dict):
        return f"expected a JSON object, found {type(manifest).__name__}"
    package, patchset = manifest.get("package"), manifest.get("patchset")
    if not isinstance(package, dict) or not isinstance(package.get("version"), str):
        return "no package.version string"
    # an unpatched build (the cpu-test flavor of upstream) records its patchset version as null
    if not isinstance(patchset, dict) or not isinstance(patchset.get("version"), (str, type(None))):
        return "no patchset.version (a string, or null for an unpatched build)"
    flags = manifest.get("flags")
    if not isinstance(flags, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in flags):
        return "flags is not a list of objects with a name"
    return None


def _version(package: Path, manifest: dict[str, Any] | None) -> str:
    try:
        dist = importlib.metadata.distribution("megatron-core")
        if Path(str(dist.locate_file("megatron/core"))).resolve() == package.resolve():
            return dist.version
    except importlib.metadata.PackageNotFoundError:
        pass
    if manifest is not None:
        return str(manifest["package"]["version"])
    found = re.findall(r"^(MAJOR|MINOR|PATCH) = (\d+)", (package / "package_info.py").read_text(encoding="utf-8"),
                       re.MULTILINE)
    return ".".join(number for _, number in found)


class MegatronCoreMissing(PrimusRuntimeError):
    """No megatron-core can be imported in this environment."""


class WheelManifestError(PrimusRuntimeError):
    """The installed megatron-core's ``_primus/manifest.json`` cannot be read."""


class WheelFlavorError(PrimusRuntimeError):
    """The installed megatron-core is a build that must not be used on this host."""


ALLOW_CPU_TEST_ENV = "PRIMUS_ALLOW_CPU_TEST_WHEEL"


def require_usable(info: WheelInfo, cuda_available: bool, allow_cpu_test: bool | None = None) -> None:
    """Refuse a cpu-test build on a host with GPUs, unless explicitly allowed.

    A cpu-test wheel routes every CUDA call through a test shim: on a GPU host it would run, but
    it is not the wheel the patchsets ship, so results from it are not the product's.
    """
    if allow_cpu_test is None:
        allow_cpu_test = os.environ.get(ALLOW_CPU_TEST_ENV, "") not in ("", "0")
    flavor = info.manifest.get("flavor", "default") if info.manifest else "default"
    if flavor == "cpu-test" and cuda_available and not allow_cpu_test:
        raise WheelFlavorError(
            f"megatron-core {info.version} is a cpu-test build (CUDA calls go through a test shim, for "
            f"CPU-only CI) and this host has GPUs: install the default wheel, or set "
            f"{ALLOW_CPU_TEST_ENV}=1 to use it anyway"
        )
