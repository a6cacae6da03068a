"""Load, validate and order the patchsets under ``patchsets/``.

Layout::

    patchsets/
      v0.1.0/
        series.yaml                 # version, summary, ordered list of patch ids
        <patch id>/
          patch.yaml                # flags, upstream status, edits
          *.py.j2                   # code templates named by the edits

Every problem is a :class:`PatchsetError` naming the file, the line and the key.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import jinja2
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from rewriter.errors import PatchsetError
from rewriter.ops.catalog import CATALOG, INSERT_WHERE
from rewriter.patchset.model import Edit, Flag, Patch, Patchsets, PatchsetVersion, content_hash
from rewriter.patchset.schema import (
    EDIT_COMMON_KEYS,
    FLAG_KEYS,
    FLAG_TYPES,
    PATCH_KEYS,
    PLANNED_FLAG_KEYS,
    SERIES_KEYS,
    UPSTREAM_KEYS,
    check_choice,
    check_flag_value,
    check_mapping,
    where,
)
from rewriter.yamlio import LocatedDict, load_yaml

VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+$")
IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
RUNTIME_MODULE_RE = re.compile(r"^primus_runtime(\.[a-z_][a-z0-9_]*)+$")
#: flag types that add_config_field can declare as a dataclass field (see rewriter.ops.add_config_field)
CONFIG_FIELD_TYPES = ("bool", "int", "float", "str")


def load_patchsets(root: Path) -> Patchsets:
    """Load every ``vX.Y.Z`` folder under ``root``, oldest first, fully validated."""
    if not root.is_dir():
        raise PatchsetError(f"{root}: patchsets folder not found")
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
        key=lambda p: _folder_version(p),
    )
    versions: list[PatchsetVersion] = []
    seen_ids: dict[str, str] = {}
    seen_flags: dict[str, tuple[str, Flag]] = {}
    for folder in folders:
        version = _load_version(root, folder, seen_ids, seen_flags)
        versions.append(version)
    return Patchsets(root=root, versions=tuple(versions))


def _folder_version(folder: Path) -> Version:
    if not VERSION_RE.match(folder.name):
        raise PatchsetError(f"{folder}: patchset folders must be named vX.Y.Z, got {folder.name!r}")
    try:
        return Version(folder.name[1:])
    except InvalidVersion as exc:  # pragma: no cover - the regex already guards this
        raise PatchsetError(f"{folder}: not a version: {folder.name!r}") from exc


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _load_version(
    root: Path, folder: Path, seen_ids: dict[str, str], seen_flags: dict[str, tuple[str, Flag]]
) -> PatchsetVersion:
    series_path = folder / "series.yaml"
    origin = _rel(root, series_path)
    if not series_path.is_file():
        raise PatchsetError(f"{origin}: missing; every patchset version needs a series.yaml")
    series = check_mapping(origin, load_yaml(series_path, origin), SERIES_KEYS, "series")
    if series["version"] != folder.name:
        raise PatchsetError(
            f"{where(origin, series, 'version')}: version {series['version']!r} does not match "
            f"its folder {folder.name!r}"
        )
    listed: list[str] = []
    for i, pid in enumerate(series["patches"]):
        if not isinstance(pid, str):
            raise PatchsetError(f"{where(origin, series, 'patches')}: patches[{i}] must be a patch id string")
        if pid in listed:
            raise PatchsetError(f"{where(origin, series, 'patches')}: patch {pid!r} is listed twice")
        listed.append(pid)
    on_disk = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    unlisted = [name for name in on_disk if name not in listed]
    if unlisted:
        raise PatchsetError(
            f"{where(origin, series, 'patches')}: patch folder(s) {', '.join(unlisted)} exist but are "
            "not listed in the series; list them (order matters) or remove them"
        )
    patches = []
    for pid in listed:
        patch_dir = folder / pid
        if not patch_dir.is_dir():
            raise PatchsetError(f"{where(origin, series, 'patches')}: listed patch {pid!r} has no folder {_rel(root, patch_dir)}")
        patch = _load_patch(root, patch_dir, folder.name, seen_flags)
        if patch.id in seen_ids:
            raise PatchsetError(f"{_rel(root, patch_dir / 'patch.yaml')}: duplicate patch id {patch.id!r} (also in {seen_ids[patch.id]})")
        seen_ids[patch.id] = folder.name
        for flag in patch.flags:
            _claim_flag(seen_flags, flag, f"patch {patch.id!r}", f"{_rel(root, patch_dir / 'patch.yaml')}: flag")
        patches.append(patch)
    planned = []
    for node in series.get("planned_flags", []):
        flag = _load_flag(origin, node, folder.name, implemented_in=None)
        _claim_flag(seen_flags, flag, f"planned_flags of {folder.name}", f"{where(origin, node, 'name')}: planned flag")
        planned.append(flag)
    return PatchsetVersion(version=folder.name, summary=series["summary"], patches=tuple(patches),
                           planned_flags=tuple(planned))


def _load_patch(root: Path, patch_dir: Path, version: str, declared: dict[str, tuple[str, Flag]]) -> Patch:
    path = patch_dir / "patch.yaml"
    origin = _rel(root, path)
    if not path.is_file():
        raise PatchsetError(f"{origin}: missing patch.yaml")
    data = check_mapping(origin, load_yaml(path, origin), PATCH_KEYS, "patch")
    if data["id"] != patch_dir.name:
        raise PatchsetError(f"{where(origin, data, 'id')}: id {data['id']!r} does not match its folder {patch_dir.name!r}")
    if not IDENT_RE.match(data["id"]):
        raise PatchsetError(f"{where(origin, data, 'id')}: id {data['id']!r} must be a lower-case identifier")
    check_choice(origin, data, "implemented_in", ("core", "runtime"))
    upstream = check_mapping(origin, data["upstream"], UPSTREAM_KEYS, "upstream")
    check_choice(origin, upstream, "status", ("absent", "partial", "present"))
    flags = tuple(_load_flag(origin, node, version, data["implemented_in"]) for node in data.get("flags", []))
    uses = _used_flags(origin, data, declared)
    if not flags and not uses:
        raise PatchsetError(
            f"{where(origin, data)}: a patch declares at least one flag, or uses_flags of an earlier patch"
        )
    names = [f.name for f in flags]
    for name in names:
        if names.count(name) > 1:
            raise PatchsetError(f"{where(origin, data, 'flags')}: flag {name!r} declared twice")
    edit_nodes = data.get("edits", [])
    if data["implemented_in"] == "runtime" and edit_nodes:
        raise PatchsetError(f"{where(origin, data, 'edits')}: a runtime-implemented patch has no core edits")
    if data["implemented_in"] == "core" and not edit_nodes:
        raise PatchsetError(f"{where(origin, data)}: a core patch needs at least one edit")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(patch_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    flag_map = {f.name: f for f in flags + uses}
    own = {f.name for f in flags}
    known = set(declared) | own
    edits = tuple(_load_edit_with_variants(origin, node, i, env, data["id"], flag_map, own, known)
                  for i, node in enumerate(edit_nodes))
    files = [path] + sorted(p for p in patch_dir.iterdir() if p.is_file() and p.name != "patch.yaml")
    return Patch(
        id=data["id"],
        summary=data["summary"],
        version=version,
        implemented_in=data["implemented_in"],
        upstream_status=upstream["status"],
        upstream_note=upstream.get("note", ""),
        flags=flags,
        edits=edits,
        path=patch_dir,
        content_hash=content_hash(files),
        uses_flags=uses,
    )


def _used_flags(origin: str, data: LocatedDict, declared: dict[str, tuple[str, Flag]]) -> tuple[Flag, ...]:
    """``uses_flags``: flags of earlier patches (this series) that also gate this patch's edits."""
    used = []
    for name in data.get("uses_flags", []):
        if not isinstance(name, str) or name not in declared:
            raise PatchsetError(
                f"{where(origin, data, 'uses_flags')}: uses flag {name!r}, which no earlier patch declares"
            )
        used.append(declared[name][1])
    return tuple(used)


def _load_flag(origin: str, node: Any, version: str, implemented_in: str | None) -> Flag:
    """One flag of a patch (``implemented_in`` is the patch's), or with ``implemented_in=None``
    one of a series' ``planned_flags``, which says itself where it will be implemented."""
    planned = implemented_in is None
    node = check_mapping(origin, node, PLANNED_FLAG_KEYS if planned else FLAG_KEYS,
                         "planned flag" if planned else "flag")
    check_choice(origin, node, "type", tuple(FLAG_TYPES))
    check_choice(origin, node, "table", ("module", "model"))
    check_choice(origin, node, "origin", ("primus", "upstream"))
    if implemented_in is None:
        check_choice(origin, node, "implemented_in", ("core", "runtime"))
        implemented_in = str(node["implemented_in"])
    if not IDENT_RE.match(node["name"]):
        raise PatchsetError(f"{where(origin, node, 'name')}: flag name {node['name']!r} must be a lower-case identifier")
    if node["version"] != version:
        raise PatchsetError(
            f"{where(origin, node, 'version')}: flag {node['name']!r} says version {node['version']!r} "
            f"but lives in patchset {version}; versions must be in order (move the patch or fix the version)"
        )
    nullable = bool(node.get("nullable", False))
    flag_type = node["type"]
    _check_values(origin, node, flag_type, nullable)
    since = node.get("upstream_since")
    runtime_module = _runtime_module(origin, node, implemented_in, planned)
    return Flag(
        name=node["name"],
        type=flag_type,
        default=node["default"],
        version=node["version"],
        description=node["description"].strip(),
        notes=node.get("notes", "").strip(),
        table=node["table"],
        origin=node.get("origin", "primus"),
        choices=tuple(node.get("choices", ())),
        nullable=nullable,
        primus_default=node.get("primus_default"),
        has_primus_default="primus_default" in node,
        upstream_since=since,
        upstream_values=tuple(node.get("upstream_values", ())),
        scope="trainer" if implemented_in == "runtime" else "core",
        runtime_module=runtime_module,
        implemented=not planned,
    )


def _check_values(origin: str, node: LocatedDict, flag_type: str, nullable: bool) -> None:
    """``default``, ``primus_default`` and ``upstream_values`` have the flag's type (and choices);
    a ``primus_default`` differs from ``default``; ``upstream_since`` is a release."""
    check_flag_value(origin, node, "default", node["default"], flag_type, nullable)
    if "primus_default" in node:
        check_flag_value(origin, node, "primus_default", node["primus_default"], flag_type, nullable)
        if node["primus_default"] == node["default"]:
            raise PatchsetError(
                f"{where(origin, node, 'primus_default')}: primus_default equals default; declare it only "
                "where Primus's configs differ from the megatron-core default"
            )
    for value in node.get("upstream_values", []):
        check_flag_value(origin, node, "upstream_values", value, flag_type, nullable)
    since = node.get("upstream_since")
    if since is not None:
        try:
            Version(since)
        except InvalidVersion:
            raise PatchsetError(
                f"{where(origin, node, 'upstream_since')}: upstream_since names a megatron-core release "
                f"such as \"0.11.0\", got {since!r}"
            ) from None


def _runtime_module(origin: str, node: LocatedDict, implemented_in: str, planned: bool) -> str | None:
    """The module implementing a runtime patch's flag: required there, refused for core flags."""
    runtime_module: str | None = node.get("runtime_module")
    if implemented_in == "runtime" and not planned and runtime_module is None:
        raise PatchsetError(
            f"{where(origin, node)}: flag {node['name']!r} of a runtime patch needs 'runtime_module', "
            "the primus_runtime module that implements it"
        )
    if runtime_module is None:
        return None
    if implemented_in != "runtime":
        raise PatchsetError(
            f"{where(origin, node, 'runtime_module')}: runtime_module is for flags of runtime patches; "
            "megatron-core implements this one"
        )
    if not RUNTIME_MODULE_RE.match(runtime_module):
        raise PatchsetError(
            f"{where(origin, node, 'runtime_module')}: runtime_module names a module of primus_runtime, "
            f"such as primus_runtime.trainer.trackers, got {runtime_module!r}"
        )
    return runtime_module


def _load_edit_with_variants(origin: str, node: Any, index: int, env: jinja2.Environment, patch_id: str,
                             flags: dict[str, Flag], own_flags: set[str], known_flags: set[str]) -> Edit:
    """An edit and its per-release ``variants``.

    Each variant is a mapping of keys that replace the edit's own (``op`` stays), with a required
    ``releases``; it is loaded and checked as a whole edit, so it may change the anchor, target,
    template, ``expect`` or anything else its operation takes.
    """
    edit = _load_edit(origin, node, index, env, patch_id, flags, own_flags, known_flags)
    if not isinstance(node, dict) or "variants" not in node:
        return edit
    variants = []
    for n, override in enumerate(node["variants"]):
        what = f"edits[{index}].variants[{n}]"
        if not isinstance(override, dict) or "releases" not in override:
            raise PatchsetError(f"{where(origin, override)}: {what} must be a mapping with 'releases' (e.g. \"<0.14\") "
                                "and the keys it replaces")
        for key in ("op", "variants"):
            if key in override:
                raise PatchsetError(f"{where(origin, override, key)}: {what} cannot change {key!r}")
        merged = LocatedDict({k: v for k, v in node.items() if k != "variants"})
        merged.line = getattr(override, "line", getattr(node, "line", 1))
        merged.key_lines = {**getattr(node, "key_lines", {}), **getattr(override, "key_lines", {})}
        if "template" in override:
            merged.pop("code", None)
        if "code" in override:
            merged.pop("template", None)
        merged.update(override)
        loaded = _load_edit(origin, merged, index, env, patch_id, flags, own_flags, known_flags)
        variants.append(replace(loaded, variant=f"variants[{n}]"))
    return replace(edit, variants=tuple(variants))


def _check_releases(loc: str, releases: str) -> None:
    """``releases`` is a PEP 440 specifier set over megatron-core versions."""
    try:
        SpecifierSet(releases)
    except InvalidSpecifier:
        raise PatchsetError(
            f"{loc}: releases {releases!r} is not a version range; write PEP 440 specifiers such as \">=0.14\" "
            "or \">=0.12,<0.15\""
        ) from None


def _load_edit(
    origin: str,
    node: Any,
    index: int,
    env: jinja2.Environment,
    patch_id: str,
    flags: dict[str, Flag],
    own_flags: set[str],
    known_flags: set[str],
) -> Edit:
    what = f"edits[{index}]"
    if not isinstance(node, dict) or "op" not in node:
        raise PatchsetError(f"{where(origin, node)}: {what} must be a mapping with an 'op' key")
    kind = node["op"]
    spec = CATALOG.get(kind)
    if spec is None:
        hint = difflib.get_close_matches(str(kind), list(CATALOG), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise PatchsetError(
            f"{where(origin, node, 'op')}: unknown operation {kind!r} in {what}{suggestion}; "
            f"known: {', '.join(CATALOG)}"
        )
    keys = dict(EDIT_COMMON_KEYS)
    keys.update({name: ((typ,), req) for name, (typ, req) in spec.args.items()})
    node = check_mapping(origin, node, keys, f"{what} ({kind})")
    loc = where(origin, node)
    for key, tree in (("file", "the upstream tree"), ("template", "the patch folder"), ("source", "the release tree")):
        if isinstance(node.get(key), str):
            _check_inside(where(origin, node, key), key, node[key], tree)
    if spec.needs_target and not node.get("target"):
        raise PatchsetError(f"{loc}: {what} ({kind}) needs a 'target' (qualified name such as Class.method)")
    if not spec.needs_target and "target" in node:
        raise PatchsetError(f"{where(origin, node, 'target')}: {what} ({kind}) takes no 'target'")
    guard = node.get("guard")
    if spec.needs_guard:
        if not guard:
            raise PatchsetError(f"{loc}: {what} ({kind}) needs a 'guard' expression on its flag")
        _check_guard(where(origin, node, "guard"), guard, flags, node.get("flag_param"))
    elif guard:
        raise PatchsetError(f"{where(origin, node, 'guard')}: {what} ({kind}) takes no 'guard'")
    if kind == "insert_statements":
        check_choice(origin, node, "where", INSERT_WHERE)
        if node["where"] in ("before", "after") and not node.get("anchor"):
            raise PatchsetError(f"{loc}: {what} inserts {node['where']} a statement, so it needs an 'anchor'")
        if node["where"] not in ("before", "after") and node.get("anchor"):
            raise PatchsetError(f"{where(origin, node, 'anchor')}: 'anchor' is only used with where: before/after")
        if node.get("anchor"):
            anchor = node["anchor"].strip()
            _check_python(where(origin, node, "anchor"), anchor + ("\n    pass" if anchor.endswith(":") else ""), "anchor")
    if kind == "extend_condition" and not node["anchor"].strip().endswith(":"):
        raise PatchsetError(f"{where(origin, node, 'anchor')}: extend_condition anchors an if header, ending in ':'")
    if kind == "add_config_field" and node["flag"] not in own_flags:
        raise PatchsetError(f"{where(origin, node, 'flag')}: flag {node['flag']!r} is not declared by this patch")
    if kind == "add_config_field" and flags[node["flag"]].type not in CONFIG_FIELD_TYPES:
        raise PatchsetError(
            f"{where(origin, node, 'flag')}: add_config_field supports flags of type {', '.join(CONFIG_FIELD_TYPES)}; "
            f"flag {node['flag']!r} is {flags[node['flag']].type}"
        )
    if kind in ("add_module", "import_module") and not node["file"].endswith(".py"):
        raise PatchsetError(f"{where(origin, node, 'file')}: {kind} creates a .py file, got {node['file']!r}")
    if kind == "import_module":
        _check_import(origin, node)
    if "releases" in node:
        _check_releases(where(origin, node, "releases"), node["releases"])
    expect = node.get("expect", 1)
    if expect < 1:
        raise PatchsetError(f"{where(origin, node, 'expect')}: expect must be at least 1")
    code = _render_code(origin, node, spec.needs_code, env, patch_id, flags, what)
    if code is not None:
        _check_flags_read(where(origin, node, "template" if "template" in node else "code"), code, flags, known_flags)
    args = {k: v for k, v in node.items() if k in spec.args}
    return Edit(
        op=kind,
        file=node["file"],
        target=node.get("target"),
        args=args,
        expect=expect,
        guard=guard,
        code=code,
        template=node.get("template"),
        source=loc,
        releases=node.get("releases"),
    )


def _render_code(
    origin: str,
    node: LocatedDict,
    needs_code: bool,
    env: jinja2.Environment,
    patch_id: str,
    flags: dict[str, Flag],
    what: str,
) -> str | None:
    has_template, has_code = "template" in node, "code" in node
    if not needs_code:
        if has_template or has_code:
            key = "template" if has_template else "code"
            raise PatchsetError(f"{where(origin, node, key)}: {what} ({node['op']}) takes no code")
        return None
    if has_template == has_code:
        raise PatchsetError(f"{where(origin, node)}: {what} needs exactly one of 'template' or 'code'")
    context = {"patch_id": patch_id, "flags": flags, "vars": node.get("vars", {})}
    key = "template" if has_template else "code"
    loc = where(origin, node, key)
    try:
        if has_template:
            text = env.get_template(node["template"]).render(context)
        else:
            text = env.from_string(node["code"]).render(context)
    except jinja2.TemplateNotFound as exc:
        folder = env.loader.searchpath[0] if isinstance(env.loader, jinja2.FileSystemLoader) else "the patch folder"
        raise PatchsetError(f"{loc}: missing template {exc.name!r} (looked in {folder})") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise PatchsetError(f"{loc}: template {exc.name or 'code'}:{exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        raise PatchsetError(f"{loc}: template uses an undefined variable: {exc.message}") from exc
    _check_python(loc, text, f"rendered {key}")
    return text


def _claim_flag(seen: dict[str, tuple[str, Flag]], flag: Flag, owner: str, at: str) -> None:
    """Record that ``owner`` declares ``flag``; a flag is declared once across all versions."""
    if flag.name in seen:
        raise PatchsetError(f"{at} {flag.name!r} is already declared by {seen[flag.name][0]}")
    seen[flag.name] = (owner, flag)


def _check_inside(loc: str, key: str, value: str, tree: str) -> None:
    """A patch path is relative and stays inside the tree it names: no absolute path, no ``..``.

    Checked at load time, so ``check`` refuses what ``build`` would otherwise write (or read)
    outside its staging tree.
    """
    path = PurePosixPath(value)
    if not value.strip() or path.is_absolute() or PureWindowsPath(value).drive or "\\" in value:
        raise PatchsetError(f"{loc}: {key} {value!r} must be a relative path inside {tree}")
    if ".." in path.parts:
        raise PatchsetError(f"{loc}: {key} {value!r} leaves {tree} ('..'); name a path inside it")


def _check_flags_read(loc: str, code: str, flags: dict[str, Flag], known: set[str]) -> None:
    """Code that reads another patch's flag declares it in ``uses_flags``, so the patch notes and
    the manifest list every flag the patch depends on.

    A read is ``<anything>.config.<flag>``, ``config.<flag>`` or ``getattr(<obj>, "<flag>", ...)``
    of a flag some patch (up to this one) declares.
    """
    read: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Attribute) and node.attr in known:
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "config") or (
                isinstance(owner, ast.Attribute) and owner.attr == "config"
            ):
                read.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in known):
            read.add(str(node.args[1].value))
    undeclared = sorted(read - set(flags))
    if undeclared:
        raise PatchsetError(
            f"{loc}: the code reads flag(s) {', '.join(undeclared)} of other patches; list them under "
            "uses_flags so the patch notes and manifest name them"
        )


def _check_python(loc: str, text: str, what: str) -> None:
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise PatchsetError(f"{loc}: {what} is not valid Python (line {exc.lineno}: {exc.msg})") from exc


def _check_guard(loc: str, guard: str, flags: dict[str, Flag], flag_param: str | None = None) -> None:
    """A guard is an expression that reads at least one of the patch's flags.

    ``flag_param`` names a parameter through which upstream passes the flag into the target
    function (``moe_utils.permute(..., fused=config.moe_permute_fusion)``): reading it counts.
    """
    try:
        tree = ast.parse(guard, mode="eval")
    except SyntaxError as exc:
        raise PatchsetError(f"{loc}: guard is not a Python expression: {exc.msg}") from exc
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    if not names & (set(flags) | ({flag_param} if flag_param else set())):
        raise PatchsetError(
            f"{loc}: guard {guard!r} reads none of this patch's flags ({', '.join(flags)}); "
            "every edit must be gated by its flag"
        )


DOTTED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _check_import(origin: str, node: LocatedDict) -> None:
    """``import_module``: a .py source, a release version, dotted redirects, identifier names."""
    if not node["source"].endswith(".py"):
        raise PatchsetError(f"{where(origin, node, 'source')}: import_module imports a .py file, got {node['source']!r}")
    if not node["from_release"].strip():
        raise PatchsetError(f"{where(origin, node, 'from_release')}: from_release names a release, e.g. \"0.10.0\"")
    for old, new in (node.get("imports") or {}).items():
        if not (isinstance(old, str) and isinstance(new, str) and DOTTED_RE.match(old) and DOTTED_RE.match(new)):
            raise PatchsetError(
                f"{where(origin, node, 'imports')}: imports maps module.Name to module.Name, got {old!r}: {new!r}"
            )
    for name in node.get("use_pinned") or []:
        if not (isinstance(name, str) and name.isidentifier()):
            raise PatchsetError(f"{where(origin, node, 'use_pinned')}: use_pinned lists top-level names, got {name!r}")
