"""YAML loading that remembers where each key came from.

Validation errors must name the file and line, so mappings are loaded as :class:`LocatedDict`,
a ``dict`` that also records the line of every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rewriter.errors import PatchsetError


class LocatedDict(dict):  # type: ignore[type-arg]
    """A mapping loaded from YAML, with the 1-based line of itself and of each key."""

    line: int
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings are :class:`LocatedDict`."""

    error: type[Exception] = PatchsetError


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    result = LocatedDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise loader.error(f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[str(key)] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path, display: str | None = None, error: type[Exception] = PatchsetError) -> Any:
    """Load one YAML file; syntax errors become ``error`` (a :class:`PatchsetError` unless the
    caller, such as primus_runtime's config loader, has its own error type) naming file and line."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{name}: cannot read: {exc.strerror}") from exc
    loader = _Loader(text)
    loader.name = name
    loader.error = error
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise error(f"{name}:{line}: malformed YAML: {exc.problem or exc}") from exc
    finally:
        loader.dispose()
