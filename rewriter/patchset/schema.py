"""Checks of the patchset YAML shape, each failure naming file, line and key.

Hand-written rather than JSON Schema so that every message can carry the line of the offending
key and a "did you mean" for typos.
"""

from __future__ import annotations

import difflib
from typing import Any

from rewriter.errors import PatchsetError
from rewriter.yamlio import LocatedDict

FLAG_TYPES = {
    "bool": (bool,),
    "int": (int,),
    "float": (float, int),
    "str": (str,),
    "list[int]": (list,),
    "list[str]": (list,),
}

# key -> (accepted python types, required)
SERIES_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "version": ((str,), True),
    "summary": ((str,), True),
    "patches": ((list,), True),
    "planned_flags": ((list,), False),
}
PATCH_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True),
    "summary": ((str,), True),
    "implemented_in": ((str,), True),
    "upstream": ((dict,), True),
    "flags": ((list,), False),
    "uses_flags": ((list,), False),
    "edits": ((list,), False),
}
UPSTREAM_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "status": ((str,), True),
    "note": ((str,), False),
}
FLAG_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "type": ((str,), True),
    "default": ((object,), True),
    "version": ((str,), True),
    "description": ((str,), True),
    "notes": ((str,), False),
    "table": ((str,), True),
    "origin": ((str,), False),
    "choices": ((list,), False),
    "nullable": ((bool,), False),
    "primus_default": ((object,), False),
    "upstream_since": ((str,), False),
    "upstream_values": ((list,), False),
    "runtime_module": ((str,), False),
}
#: a documented flag that no patch implements yet (``planned_flags`` of a series) also says where
#: it will be implemented, since it has no patch to say so
PLANNED_FLAG_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    **{k: v for k, v in FLAG_KEYS.items() if k != "runtime_module"},
    "implemented_in": ((str,), True),
}
EDIT_COMMON_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "op": ((str,), True),
    "file": ((str,), True),
    "target": ((str,), False),
    "expect": ((int,), False),
    "guard": ((str,), False),
    "template": ((str,), False),
    "code": ((str,), False),
    "vars": ((dict,), False),
    "flag_param": ((str,), False),
    "releases": ((str,), False),
    "variants": ((list,), False),
}


def where(origin: str, node: Any, key: str | None = None) -> str:
    """``file:line`` of a mapping, or of one of its keys."""
    if isinstance(node, LocatedDict):
        line = node.line_of(key) if key else node.line
        return f"{origin}:{line}"
    return origin


def check_mapping(
    origin: str,
    node: Any,
    keys: dict[str, tuple[tuple[type, ...], bool]],
    what: str,
) -> LocatedDict:
    """Require ``node`` to be a mapping with only known keys, of the right types."""
    if not isinstance(node, dict):
        raise PatchsetError(f"{where(origin, node)}: {what} must be a mapping, got {type(node).__name__}")
    for key in node:
        if key not in keys:
            hint = difflib.get_close_matches(str(key), list(keys), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(keys)})"
            raise PatchsetError(f"{where(origin, node, key)}: unknown key {key!r} in {what}{suggestion}")
    for key, (types, required) in keys.items():
        if key not in node:
            if required:
                raise PatchsetError(f"{where(origin, node)}: {what} is missing required key {key!r}")
            continue
        value = node[key]
        if types != (object,) and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            names = " or ".join(t.__name__ for t in types)
            raise PatchsetError(
                f"{where(origin, node, key)}: key {key!r} must be {names}, got {type(value).__name__} ({value!r})"
            )
    return node if isinstance(node, LocatedDict) else LocatedDict(node)


def check_choice(origin: str, node: LocatedDict, key: str, choices: tuple[str, ...]) -> None:
    value = node.get(key)
    if value is not None and value not in choices:
        raise PatchsetError(
            f"{where(origin, node, key)}: key {key!r} must be one of {', '.join(choices)}, got {value!r}"
        )


def check_flag_value(origin: str, node: LocatedDict, key: str, value: Any, flag_type: str, nullable: bool) -> None:
    """A value of the flag (its ``default``, ``primus_default`` or one of its ``upstream_values``)
    must have the flag's declared type, and be one of its ``choices`` where it has some."""
    what = f"{key} {value!r} of flag {node['name']!r}"
    if value is None:
        if not nullable:
            raise PatchsetError(
                f"{where(origin, node, key)}: {key} of flag {node['name']!r} is null; "
                "declare 'nullable: true' if that is intended"
            )
        return
    types = FLAG_TYPES[flag_type]
    if not isinstance(value, types) or (flag_type != "bool" and isinstance(value, bool)):
        raise PatchsetError(f"{where(origin, node, key)}: {what} is not of its declared type {flag_type}")
    if flag_type.startswith("list["):
        inner = int if flag_type == "list[int]" else str
        if not isinstance(value, list) or not all(isinstance(x, inner) and not isinstance(x, bool) for x in value):
            raise PatchsetError(f"{where(origin, node, key)}: {what} is not a {flag_type}")
    choices = node.get("choices")
    if choices and value not in choices:
        raise PatchsetError(f"{where(origin, node, key)}: {key} {value!r} is not one of its choices {list(choices)}")
