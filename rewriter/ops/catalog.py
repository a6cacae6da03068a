"""The YAML surface of every operation: its ``op:`` name, what it does, and its arguments.

Kept apart from the implementations (which need libcst) so that loading and validating
patchsets, rendering docs, and a fully cached rebuild never import libcst. The operations table of
docs/patchset-format.md is rendered from these specs (``python -m rewriter docs``), so what an
operation says it does lives next to what the loader checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OpSpec:
    """What the loader checks for one operation kind."""

    kind: str
    #: what it does (the "what it does" column of the docs' operations table; markdown)
    description: str
    #: what its "already-present" status means
    present: str
    #: op-specific keys: name -> (python type, required)
    args: dict[str, tuple[type, bool]]
    needs_target: bool = True
    needs_guard: bool = True
    needs_code: bool = True
    #: what ``target`` names: "function" (or method) or "class"
    target_kind: str = "function"
    #: a word on an argument's form, for the docs (argument name -> note)
    arg_notes: dict[str, str] = field(default_factory=dict)


INSERT_WHERE = ("start", "end", "before_return", "before", "after")

CATALOG: dict[str, OpSpec] = {
    spec.kind: spec
    for spec in (
        OpSpec(
            kind="add_config_field",
            description=(
                "adds the flag as a dataclass field after the class's last field, with its description as the "
                'field docstring, and a type (and `choices`) check at the start of `__post_init__`'
            ),
            present='the class already has the field: upstream has it, the patch is retired',
            args={"flag": (str, True)},
            target_kind="class",
            needs_guard=False,
            needs_code=False,
        ),
        OpSpec(
            kind="insert_statements",
            description=(
                'inserts `if <guard>:` + the code at `start` (after the docstring), `end`, `before_return` (every'
                ' return; `expect` = their number), or `before`/`after` every statement equal to `anchor` '
                '(compared as Python, so layout and comments do not matter; an anchor ending in `:` such as `if x'
                ' and y:` matches the header of an `if`/`for`/`while`/`with`)'
            ),
            present='the same guarded block is already next to that place',
            args={"where": (str, True), "anchor": (str, False)},
            arg_notes={"anchor": "for before/after"},
        ),
        OpSpec(
            kind="route_function",
            description=(
                'at the start: `if <guard>: return impl(<every parameter, as received>)`; awaits for coroutines, '
                '`yield from` for generators; the upstream body stays below'
            ),
            present='the same routing block is already there',
            args={"to": (str, True)},
            arg_notes={"to": "`module:function`"},
            needs_code=False,
        ),
        OpSpec(
            kind="add_call_kwarg",
            description='adds `**({"keyword": value} if <guard> else {})` to every matching call',
            present='the call already passes that keyword',
            args={"call": (str, True), "keyword": (str, True), "value": (str, True)},
            needs_code=False,
        ),
        OpSpec(
            kind="override_call_kwarg",
            description='a keyword the call already passes becomes `(<value> if <guard> else <upstream expression>)`',
            present='the keyword already has that conditional value',
            args={"call": (str, True), "keyword": (str, True), "value": (str, True)},
            needs_code=False,
        ),
        OpSpec(
            kind="extend_condition",
            description=(
                '`if <cond>:` becomes `if <cond> and (<condition> if <guard> else True):`, so with the flag off '
                'the branch is taken exactly as upstream takes it'
            ),
            present='the `if` already has that extra term',
            args={"anchor": (str, True), "condition": (str, True)},
            arg_notes={"anchor": "an `if` header ending in `:`"},
            needs_code=False,
        ),
        OpSpec(
            kind="add_module",
            description='adds a new module (e.g. under `megatron/core/_primus/`)',
            present='the file exists with the same text',
            args={},
            needs_target=False,
            needs_guard=False,
        ),
        OpSpec(
            kind="import_module",
            description=(
                'adds `source` as it is in another release of the pin file (`vendor/upstream.yaml`: pinned or '
                'testbed, read from its verified sdist) under the new path `file`, with its imports rewritten '
                '(below)'
            ),
            present='the file exists with the same text',
            args={"from_release": (str, True), "source": (str, True), "imports": (dict, False),
                  "use_pinned": (list, False)},
            needs_target=False,
            needs_guard=False,
            needs_code=False,
        ),
    )
}
