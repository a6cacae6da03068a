"""The YAML surface of every operation: its ``op:`` name, what it does, and its arguments.

Kept apart from the implementations (which need libcst) so that loading and validating
patchsets, rendering docs, and a fully cached rebuild never import libcst.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    """What the loader checks for one operation kind."""

    kind: str
    description: str
    #: op-specific keys: name -> (python type, required)
    args: dict[str, tuple[type, bool]]
    needs_target: bool = True
    needs_guard: bool = True
    needs_code: bool = True


INSERT_WHERE = ("start", "end", "before_return", "before", "after")

CATALOG: dict[str, OpSpec] = {
    spec.kind: spec
    for spec in (
        OpSpec(
            kind="add_config_field",
            description="Add a flag as a field of a config dataclass, validated in __post_init__.",
            args={"flag": (str, True)},
            needs_guard=False,
            needs_code=False,
        ),
        OpSpec(
            kind="insert_statements",
            description=(
                "Insert statements guarded by the flag at the start or end of a function, "
                "before its returns, or before/after a matched statement."
            ),
            args={"where": (str, True), "anchor": (str, False)},
        ),
        OpSpec(
            kind="route_function",
            description=(
                "Route a function or method to a new implementation behind its flag; "
                "the upstream body stays in place for flag off."
            ),
            args={"to": (str, True)},
            needs_code=False,
        ),
        OpSpec(
            kind="add_call_kwarg",
            description="Pass one more keyword argument at a matched call, only when the flag is on.",
            args={"call": (str, True), "keyword": (str, True), "value": (str, True)},
            needs_code=False,
        ),
        OpSpec(
            kind="override_call_kwarg",
            description="Behind the flag, pass another value for a keyword a matched call already has.",
            args={"call": (str, True), "keyword": (str, True), "value": (str, True)},
            needs_code=False,
        ),
        OpSpec(
            kind="extend_condition",
            description="Behind the flag, an if (matched by its header) also requires one more condition.",
            args={"anchor": (str, True), "condition": (str, True)},
            needs_code=False,
        ),
        OpSpec(
            kind="add_module",
            description="Add a new module to the package, rendered from a template.",
            args={},
            needs_target=False,
            needs_guard=False,
        ),
        OpSpec(
            kind="import_module",
            description=(
                "Add a module of another upstream release (verified sdist) under a new name, its "
                "imports of the modules the patch moves (and any redirected names) rewritten."
            ),
            args={"from_release": (str, True), "source": (str, True), "imports": (dict, False),
                  "use_pinned": (list, False)},
            needs_target=False,
            needs_guard=False,
            needs_code=False,
        ),
    )
}
