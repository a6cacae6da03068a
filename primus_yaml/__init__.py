"""YAML loading shared by the compiler (``rewriter``) and the runtime (``primus_runtime``).

Both read hand-written YAML whose errors must name the file and line, so mappings load as
:class:`LocatedDict`, a ``dict`` that also records the line of every key. It lives in its own
package, depending on PyYAML only, so that the runtime can use it without importing the compiler
(whose dependencies a training image does not install).

The loader is safe against hostile input, not only malformed input: it refuses text that is not
UTF-8 (naming the line and byte offset) and documents whose aliases would expand past
:data:`MAX_EXPANDED_NODES` (a "billion laughs" document is a few hundred bytes that expands to
billions of values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_EXPANDED_NODES", "LocatedDict", "load_text", "load_yaml"]

#: Values a document may hold once every alias is expanded. Shipped configs hold a few thousand;
#: the cap only refuses documents built to explode.
MAX_EXPANDED_NODES = 100_000


class LocatedDict(dict[Any, Any]):
    """A mapping loaded from YAML, with the 1-based line of itself and of each key."""

    line: int
    key_lines: dict[str, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 1
        self.key_lines = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings are :class:`LocatedDict`, raising the caller's error type."""

    error: type[Exception] = ValueError


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    result = LocatedDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise loader.error(f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[str(key)] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _expanded_size(root: yaml.Node, name: str, error: type[Exception]) -> int:
    """How many values the document holds with every alias expanded, counted without expanding.

    An alias is the same node object as its anchor, so sizes are memoised by node identity and
    the count costs one visit per distinct node. A node reached again while it is being counted
    is a recursive alias, which no config needs.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise error(f"{name}:{node.start_mark.line + 1}: recursive YAML alias; configs cannot refer to themselves")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        sizes[key] = min(total, MAX_EXPANDED_NODES + 1)
        return sizes[key]

    return size(root)


def load_text(text: str, name: str, error: type[Exception]) -> Any:
    """Parse one YAML document; every problem is an ``error`` whose message starts ``name:line:``."""
    loader = _Loader(text)
    loader.name = name
    loader.error = error
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, name, error) > MAX_EXPANDED_NODES:
            raise error(
                f"{name}:{node.start_mark.line + 1}: refused: its aliases expand to more than "
                f"{MAX_EXPANDED_NODES} values (a YAML alias bomb?); write the values out instead"
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise error(f"{name}:{line}: malformed YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:  # the reader's errors (control characters) carry no mark
        raise error(f"{name}: malformed YAML: {exc}") from exc
    finally:
        loader.dispose()


def load_yaml(path: Path, display: str | None = None, error: type[Exception] = ValueError) -> Any:
    """Load one YAML file; problems become ``error`` (each caller passes its own error type)
    naming the file and line, or for text that is not UTF-8 the line and byte offset."""
    name = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{name}: cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{name}:{line}: not UTF-8 text (byte offset {exc.start}: 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None
    return load_text(text, name, error)
