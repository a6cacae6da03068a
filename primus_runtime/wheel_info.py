"""What the installed megatron-core is: upstream, or a primus-rewriter build (and which).

A patched wheel carries ``megatron.core._primus`` with its manifest; an unpatched one does not.
The runtime checks configured flags against this before doing any heavy work.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass
from typing import Any

MANIFEST_PATH = "megatron/core/_primus/manifest.json"


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
    """Inspect the megatron-core importable in this environment without importing torch."""
    dist = importlib.metadata.distribution("megatron-core")
    path = dist.locate_file(MANIFEST_PATH)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return WheelInfo(version=dist.version, patched=False, manifest=None)
    return WheelInfo(version=dist.version, patched=True, manifest=manifest)


class WheelFlavorError(RuntimeError):
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
