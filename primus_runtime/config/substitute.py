"""``${VAR}`` and ``${VAR:default}`` in config values, as Primus experiment files use them.

A value that is exactly one reference (``train_iters: ${ITERS:50}``) takes the YAML type of what
it expands to, so ``50`` is an int; a value that does not read as YAML (``*nightly``, ``@alice``,
``[1,``) stays the text it is. A reference inside a longer string (``out/${USER:me}``) expands as
text. ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from primus_runtime.errors import ConfigError
from primus_yaml import LocatedDict, load_text

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


class _NotYaml(ValueError):
    """The expanded text does not read as YAML (or expands past the alias cap): keep it as text."""


class UndefinedVariable(LookupError):
    """A ``${VAR}`` without a default names a variable that is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def expand(text: str, env: Mapping[str, str]) -> Any:
    """Expand the references in one string; raise :class:`UndefinedVariable` for an unset one."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is None:
            raise UndefinedVariable(name)
        return default

    whole = _REFERENCE.fullmatch(text)
    expanded = _REFERENCE.sub(replace, text)
    if whole is not None and whole.group(0) != "$${":
        return read_value(expanded)
    return expanded


def read_value(text: str) -> Any:
    """One value given as text (an expanded variable, a command-line value): its YAML reading,
    or the text itself where it does not read as YAML; empty text is null."""
    if not text.strip():
        return None
    try:
        return load_text(text, "value", _NotYaml)
    except _NotYaml:
        return text


def expand_tree(value: Any, env: Mapping[str, str], where: str, line: int) -> Any:
    """Expand every string inside ``value``; mappings keep their type and line records.

    An unset variable without a default is a :class:`ConfigError` at ``where:line`` (the line of
    the key that holds it).
    """
    if isinstance(value, str):
        try:
            return expand(value, env)
        except UndefinedVariable as exc:
            raise ConfigError(
                f"{where}:{line}: ${{{exc.name}}} is not set and has no default; export {exc.name} "
                f"or write ${{{exc.name}:default}}"
            ) from None
    if isinstance(value, list):
        return [expand_tree(item, env, where, line) for item in value]
    if isinstance(value, LocatedDict):
        for key in list(value):
            value[key] = expand_tree(value[key], env, where, value.line_of(key))
    elif isinstance(value, dict):
        for key in list(value):
            value[key] = expand_tree(value[key], env, where, line)
    return value
