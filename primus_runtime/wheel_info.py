"""What the installed megatron-core is: upstream, or a primus-rewriter build (and which).

A patched wheel carries ``megatron.core._primus`` with its manifest; an unpatched one does not.
The runtime checks configured flags against this before doing any heavy work.
"""

from __future__ import annotations

import importlib.metadata
import json
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
