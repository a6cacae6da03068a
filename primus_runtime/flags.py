"""Check the configured Primus flags against the installed megatron-core, before any heavy work.

The flags and their facts come from the registry (``configs/flags.yaml``, generated from the
patchsets: :mod:`primus_runtime.config.registry`). A flag at its Primus default, or at a value at
which upstream already behaves as the flag says (megatron-core's own default, or a declared
upstream value), asks nothing of megatron-core and always fits. A flag set to anything else needs:

* a primus-rewriter build of megatron-core (an unpatched one has no Primus flag; the only
  exceptions are flags upstream itself has had, with the same meaning, since ``upstream_since``);
* whose patchset version is at least the flag's version (``+primus.v0.1.0`` has no v0.2.0 flag);
* whose manifest lists the flag (a documented flag the patchsets do not implement yet is not in
  it);
* and, for a trainer flag, a primus_runtime module that implements it.

Every problem is reported at once, each naming the flag, its value and where it was set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packaging.version import Version

from primus_runtime.config.registry import DocumentedFlag
from primus_runtime.config.registry import load_registry as load_documented
from primus_runtime.config.schema import Origin
from primus_runtime.errors import FlagError
from primus_runtime.wheel_info import WheelInfo

__all__ = ["DocumentedFlag", "check", "load_documented", "problems"]


def _version_key(version: str) -> Version:
    return Version(version.lstrip("v"))


def problems(params: Mapping[str, Any], origins: Mapping[str, Origin], flags: Mapping[str, DocumentedFlag],
             wheel: WheelInfo) -> list[str]:
    """What does not fit, one sentence per configured flag; empty when everything does."""
    found = []
    for name, flag in flags.items():
        value = params.get(name, flag.default)
        if value == flag.default or value in flag.upstream_values:
            continue
        said = f"{name}={value!r} ({origins[name]})" if name in origins else f"{name}={value!r}"
        if not wheel.patched:
            upstream = Version(Version(wheel.version).base_version)
            if flag.upstream_since is not None and upstream >= Version(flag.upstream_since):
                continue
            found.append(f"{said}: megatron-core {wheel.version} is upstream, which has no Primus flags; "
                         f"install a primus-rewriter build ({flag.version} or newer) or leave it at {flag.default!r}")
            continue
        wheel_version = wheel.patchset_version or "v0.0.0"
        if _version_key(flag.version) > _version_key(wheel_version):
            found.append(f"{said}: the flag is from patchset {flag.version}, newer than the installed "
                         f"megatron-core {wheel.version} (patchset {wheel_version}); build the wheel with "
                         f"--patchset {flag.version} or newer")
        elif name not in wheel.flags:
            found.append(f"{said}: the installed megatron-core {wheel.version} does not implement this "
                         f"{flag.version} flag (it is documented, but no patch of patchset {wheel_version} "
                         f"declares it)")
        elif flag.scope == "trainer" and flag.runtime_module is None:
            found.append(f"{said}: primus_runtime's trainer does not implement this flag")
    return found


def check(params: Mapping[str, Any], origins: Mapping[str, Origin], flags: Mapping[str, DocumentedFlag],
          wheel: WheelInfo) -> None:
    """Raise :class:`FlagError` listing every configured flag the installed megatron-core cannot honour."""
    found = problems(params, origins, flags, wheel)
    if found:
        raise FlagError(f"{len(found)} flag(s) do not fit the installed megatron-core: " + "; ".join(found))
