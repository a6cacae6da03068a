"""The Primus flag registry as the runtime reads it: ``configs/flags.yaml``.

The patchsets are where a flag's facts are written; ``python -m rewriter docs`` derives this file
from them (and CI fails when it is stale), so the runtime gets every flag's type, default,
version, scope and implementing module without importing the compiler. The config loader adds
each flag's default to the shipped defaults; :mod:`primus_runtime.flags` checks configured values
against the installed megatron-core with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from primus_runtime.errors import ConfigError
from primus_yaml import LocatedDict, load_yaml

__all__ = ["FILE_NAME", "SCOPES", "DocumentedFlag", "load_registry", "schema_type"]

FILE_NAME = "flags.yaml"
SCOPES = ("core", "trainer")
_REQUIRED = ("type", "default", "version", "scope")


@dataclass(frozen=True)
class DocumentedFlag:
    """One documented flag: what a config may set and what it asks of megatron-core."""

    name: str
    type: str  # bool, int, float, str, list[int] or list[str]
    default: Any  # what Primus configs start from
    version: str  # the patchset version that introduced it
    scope: str  # "core" (megatron-core reads it) or "trainer" (primus_runtime implements it)
    upstream_since: str | None = None
    #: values at which an unpatched megatron-core already behaves as the flag says
    upstream_values: tuple[Any, ...] = ()
    runtime_module: str | None = None  # for a trainer flag: the module that implements it
    implemented: bool = True  # False: documented, but no patch implements it yet
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    where: str = ""  # file:line of its entry, for messages and provenance
    line: int = 0


def schema_type(flag_type: str) -> str:
    """The config schema's name for a flag type (``list[int]`` is a ``list``)."""
    return "list" if flag_type.startswith("list[") else flag_type


def load_registry(path: Path) -> dict[str, DocumentedFlag]:
    """Every documented flag, by name, from ``path`` (a generated ``flags.yaml``)."""
    data = load_yaml(path, str(path), ConfigError)
    if not isinstance(data, LocatedDict) or not isinstance(data.get("flags"), LocatedDict):
        raise ConfigError(f"{path}:1: expected a mapping `flags:` of flag name to its facts "
                          "(regenerate it with `python -m rewriter docs`)")
    flags = {}
    for name, spec in data["flags"].items():
        line = data["flags"].line_of(name)
        where = f"{path}:{line}"
        if not isinstance(spec, dict) or not set(_REQUIRED) <= set(spec):
            raise ConfigError(f"{where}: {name} needs {', '.join(_REQUIRED)}")
        if spec["scope"] not in SCOPES:
            raise ConfigError(f"{where}: scope of {name} must be one of {', '.join(SCOPES)}")
        since = spec.get("upstream_since")
        choices = spec.get("choices")
        flags[str(name)] = DocumentedFlag(
            name=str(name), type=str(spec["type"]), default=spec["default"], version=str(spec["version"]),
            scope=spec["scope"], upstream_since=None if since is None else str(since),
            upstream_values=tuple(spec.get("upstream_values", ())), runtime_module=spec.get("runtime_module"),
            implemented=bool(spec.get("implemented", True)), nullable=bool(spec.get("nullable", False)),
            choices=None if choices is None else tuple(choices), where=str(path), line=line,
        )
    return flags
