"""Which keys a config may set, and of which type.

The shipped default files are the schema: ``configs/modules/pre_trainer.yaml`` (with its bases)
names every trainer option, ``configs/flags.yaml`` (the flag registry) every Primus flag,
``configs/models/megatron/language_model.yaml`` every architecture key; a key's type is its
default's type. Keys whose default is ``null`` get their type from ``NULLABLE`` in
:mod:`primus_runtime.config.trainer_types` or :mod:`primus_runtime.config.arch_types` (flags: from
the registry), and enumerated strings their choices from ``CHOICES`` there (flags: the registry's
``choices``). Anything else is an unknown key, reported with the nearest valid name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from primus_runtime.config import arch_types, trainer_types
from primus_runtime.config.registry import DocumentedFlag, schema_type
from primus_runtime.errors import ConfigError

TYPE_NAMES = ("bool", "int", "float", "str", "list", "dict")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


@dataclass(frozen=True)
class Origin:
    """Where a value was set: the file and line (or ``command line``), and the layer."""

    where: str
    line: int | None
    layer: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}" if self.line is not None else self.where


@dataclass(frozen=True)
class Option:
    name: str
    types: tuple[str, ...]
    default: Any
    nullable: bool
    choices: tuple[Any, ...] | None
    origin: Origin

    @property
    def type_text(self) -> str:
        text = " or ".join(self.types)
        return f"{text} or null" if self.nullable else text


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    for name, kind in (("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, kind):
            return name
    raise TypeError(f"unsupported default {value!r}")


class Schema:
    """The valid keys with their types; checks and normalises one value at a time."""

    def __init__(self, defaults: Mapping[str, Any], origins: Mapping[str, Origin],
                 flags: Mapping[str, DocumentedFlag] | None = None) -> None:
        flags = flags or {}
        declared = {**trainer_types.NULLABLE, **arch_types.NULLABLE,
                    **{name: schema_type(f.type) for name, f in flags.items() if f.nullable}}
        choices: dict[str, tuple[Any, ...]] = {**trainer_types.CHOICES, **arch_types.CHOICES,
                                               **{name: f.choices for name, f in flags.items() if f.choices}}
        self.options: dict[str, Option] = {}
        for name, default in defaults.items():
            if default is None and name not in declared:
                raise ConfigError(
                    f"{origins[name]}: default of {name!r} is null, so its type must be declared in NULLABLE "
                    f"(primus_runtime/config/trainer_types.py or primus_runtime/config/arch_types.py)"
                )
            types = tuple(declared[name].split("|")) if name in declared else (_type_of(default),)
            unknown = [t for t in types if t not in TYPE_NAMES]
            if unknown:
                raise ConfigError(f"type {unknown[0]!r} of {name!r} is not one of {', '.join(TYPE_NAMES)}")
            self.options[name] = Option(
                name, types, default, nullable=name in declared, choices=choices.get(name), origin=origins[name]
            )

    def __contains__(self, name: str) -> bool:
        return name in self.options

    def unknown_key(self, name: str, where: str) -> ConfigError:
        close = difflib.get_close_matches(name, self.options, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ConfigError(f"{where}: unknown key {name!r}{hint}")

    def check(self, name: str, value: Any, where: str) -> Any:
        """Return ``value`` normalised to the key's type, or raise naming ``where``."""
        option = self.options.get(name)
        if option is None:
            raise self.unknown_key(name, where)
        if value is None:
            if option.nullable:
                return None
            raise ConfigError(f"{where}: {name} cannot be null (expected {option.type_text})")
        for kind in option.types:
            normalised = _as_type(kind, value)
            if normalised is not _NO:
                if option.choices is not None and normalised not in option.choices:
                    raise ConfigError(
                        f"{where}: {name} must be one of {', '.join(map(repr, option.choices))}, not {normalised!r}"
                    )
                return normalised
        raise ConfigError(f"{where}: {name} expects {option.type_text}, got {type(value).__name__} {value!r}")


_NO = object()


def _as_type(kind: str, value: Any) -> Any:
    """``value`` as ``kind``, or ``_NO``. Ints are valid floats; so is float text, because YAML 1.1
    (PyYAML) reads ``1e-2`` and ``1.0e5`` as strings although Primus configs write them."""
    if kind == "bool":
        return value if isinstance(value, bool) else _NO
    if isinstance(value, bool):
        return _NO
    if kind == "int":
        return value if isinstance(value, int) else _NO
    if kind == "float":
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
        return _NO
    if kind == "str":
        return value if isinstance(value, str) else _NO
    if kind == "list":
        return value if isinstance(value, list) else _NO
    return value if isinstance(value, dict) else _NO
