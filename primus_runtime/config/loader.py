"""Resolve a Primus experiment file into one flat, typed set of parameters with provenance.

Precedence, lowest first (each layer replaces what the one before set):

1. the shipped defaults: ``configs/modules/pre_trainer.yaml`` (with its bases) and
   ``configs/models/megatron/language_model.yaml``;
2. the module config named by the experiment's ``config:`` (with its ``bases:``/``extends:``);
3. the model config named by ``model:`` (with its bases, the nearest file winning);
4. the experiment's ``overrides:``;
5. ``--key value`` on the command line.

``${VAR:default}`` is expanded in every file when it is read. Every key of every layer must be
in the schema (:mod:`primus_runtime.config.schema`); errors name the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primus_runtime.config.registry import FILE_NAME, DocumentedFlag, load_registry
from primus_runtime.config.schema import Origin, Schema
from primus_runtime.config.substitute import expand_tree, read_value
from primus_runtime.errors import ConfigError
from primus_yaml import LocatedDict, load_yaml

CONFIG_ROOT_ENV = "PRIMUS_CONFIG_ROOT"
MODULE = "pre_trainer"
BASE_KEYS = ("bases", "extends")
EXPERIMENT_KEYS = ("work_group", "user_name", "exp_name", "workspace", "modules")
MODULE_KEYS = ("framework", "config", "model", "overrides")
FRAMEWORKS = ("megatron",)


def config_root() -> Path:
    """The shipped ``configs/`` folder, or ``$PRIMUS_CONFIG_ROOT`` where a deployment moved it."""
    env = os.environ.get(CONFIG_ROOT_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


def module_dirs(root: Path) -> tuple[Path, ...]:
    return (root / "modules",)


def model_dirs(root: Path) -> tuple[Path, ...]:
    return (root / "models" / "megatron", root / "models")


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass
class Layered:
    """Values and, for each, where it was set."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)

    def set(self, key: str, value: Any, origin: Origin) -> None:
        self.values[key] = value
        self.origins[key] = origin

    def update(self, other: Layered) -> None:
        self.values.update(other.values)
        self.origins.update(other.origins)


def find_file(name: str, where: str, near: Path, dirs: Sequence[Path]) -> Path:
    """``name`` relative to the referring file's folder, else in the shipped folders."""
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        raise ConfigError(f"{where}: {name} does not exist")
    looked = [near, *dirs]
    for folder in looked:
        if (folder / candidate).is_file():
            return folder / candidate
    raise ConfigError(f"{where}: {name} not found (looked in: {', '.join(_display(d) for d in looked)})")


def _read_mapping(path: Path, env: Mapping[str, str]) -> tuple[LocatedDict, str]:
    display = _display(path)
    data = load_yaml(path, display, ConfigError)
    if data is None:
        data = LocatedDict()
        data.line, data.key_lines = 1, {}
    if not isinstance(data, LocatedDict):
        raise ConfigError(f"{display}:1: expected a mapping of keys to values, got {type(data).__name__}")
    return expand_tree(data, env, display, data.line), display


def _bases_of(data: LocatedDict, display: str) -> list[str]:
    present = [k for k in BASE_KEYS if k in data]
    if len(present) == 2:
        raise ConfigError(f"{display}:{data.line_of('extends')}: use either bases: or extends:, not both")
    if not present:
        return []
    bases = data.pop(present[0])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{display}:{data.line_of(present[0])}: {present[0]} must be a list of file names")
    return bases


def load_chain(path: Path, layer: str, dirs: Sequence[Path], env: Mapping[str, str],
               stack: tuple[Path, ...] = ()) -> Layered:
    """One flat config file over its bases (in order; later bases and the file itself win)."""
    data, display = _read_mapping(path, env)
    result = Layered()
    for base in _bases_of(data, display):
        where = f"{display}:{data.key_lines.get('bases', data.key_lines.get('extends', data.line))}"
        base_path = find_file(base, where, path.parent, dirs).resolve()
        if base_path in (*stack, path.resolve()):
            cycle = " -> ".join(_display(p) for p in (*stack, path.resolve(), base_path))
            raise ConfigError(f"{where}: cyclic bases: {cycle}")
        result.update(load_chain(base_path, layer, dirs, env, (*stack, path.resolve())))
    for key, value in data.items():
        result.set(str(key), value, Origin(display, data.line_of(key), layer))
    return result


def load_flag_defaults(root: Path) -> tuple[dict[str, DocumentedFlag], Layered]:
    """The flag registry (``<root>/flags.yaml``, generated from the patchsets) and its defaults as
    a layer; a config root without a registry has no Primus flags."""
    path = root / FILE_NAME
    layer = Layered()
    if not path.is_file():
        return {}, layer
    flags = load_registry(path)
    display = _display(path)
    for name, flag in flags.items():
        layer.set(name, flag.default, Origin(display, flag.line, "default"))
    return flags, layer


def load_schema(root: Path, env: Mapping[str, str]) -> tuple[Schema, Layered]:
    """The schema and the defaults layer, from the shipped default files and the flag registry."""
    module = load_chain(root / "modules" / f"{MODULE}.yaml", "default", module_dirs(root), env)
    flags, flag_defaults = load_flag_defaults(root)
    model = load_chain(root / "models" / "megatron" / "language_model.yaml", "default", model_dirs(root), env)
    layers = (module, flag_defaults, model)
    for i, first in enumerate(layers):
        for second in layers[i + 1:]:
            both = sorted(set(first.values) & set(second.values))
            if both:
                raise ConfigError(
                    f"{second.origins[both[0]]}: {both[0]!r} also has a default at {first.origins[both[0]]}; "
                    f"keep one (a Primus flag's default is its patch's, in {FILE_NAME})"
                )
    defaults = Layered()
    for layer in layers:
        defaults.update(layer)
    return Schema(defaults.values, defaults.origins, flags), defaults


def _apply(target: Layered, layer: Layered, schema: Schema) -> None:
    for key, value in layer.values.items():
        origin = layer.origins[key]
        target.set(key, schema.check(key, value, str(origin)), origin)


@dataclass
class Experiment:
    """A resolved experiment: its identity, and the trainer module's parameters with provenance."""

    path: Path
    work_group: str
    user_name: str
    exp_name: str
    workspace: str
    framework: str
    module_config: Path
    model_config: Path
    params: dict[str, Any]
    origins: dict[str, Origin]
    defaults: dict[str, Any]

    @property
    def exp_root(self) -> Path:
        """Where this experiment writes logs, checkpoints and trackers' files."""
        return Path(self.workspace) / self.exp_name

    def changed(self) -> dict[str, Any]:
        """Parameters whose value differs from the shipped default."""
        return {k: v for k, v in self.params.items() if v != self.defaults.get(k)}


def parse_cli_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``--key value``, ``--key=value`` and a bare ``--flag`` (true), in order.

    Dashes in keys become underscores, so ``--train-iters 10`` works too.
    """
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"command line: expected --key value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                value = argv[index + 1]
                index += 1
            else:
                value = "true"
        pairs.append((key.replace("-", "_"), value))
        index += 1
    return pairs


def _cli_value(schema: Schema, key: str, text: str) -> Any:
    option = schema.options.get(key)
    if option is not None and option.types == ("str",) and text != "null":
        return text
    return read_value(text)


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be text, got {value!r}")
    return str(value)


def load_experiment(path: Path, cli: Sequence[str] = (), env: Mapping[str, str] | None = None,
                    root: Path | None = None) -> Experiment:
    """Resolve ``path`` (an experiment file) with command-line overrides ``cli``."""
    env = dict(os.environ) if env is None else env
    root = root or config_root()
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    data, display = _read_mapping(path, env)
    if _bases_of(data, display):
        raise ConfigError(f"{display}:{data.line}: an experiment file has no bases; put shared settings in a "
                          f"module config (config:) or a model config (model:)")
    for key in data:
        if key not in EXPERIMENT_KEYS:
            raise ConfigError(f"{display}:{data.line_of(key)}: unknown experiment key {key!r} "
                              f"(valid: {', '.join(EXPERIMENT_KEYS)})")
    meta = {
        "work_group": _text(data.get("work_group", "primus"), f"{display}:{data.line_of('work_group')}", "work_group"),
        "user_name": _text(data.get("user_name", env.get("USER", "user")), f"{display}:{data.line_of('user_name')}",
                           "user_name"),
        "exp_name": _text(data.get("exp_name", path.stem), f"{display}:{data.line_of('exp_name')}", "exp_name"),
        "workspace": _text(data.get("workspace", "./output"), f"{display}:{data.line_of('workspace')}", "workspace"),
    }
    module = _module_section(data, display)
    mline = module.line_of
    framework = module.get("framework", "megatron")
    if framework not in FRAMEWORKS:
        raise ConfigError(f"{display}:{mline('framework')}: framework {framework!r} is not supported "
                          f"(primus_runtime trains with: {', '.join(FRAMEWORKS)})")
    for key in ("config", "model"):
        if not isinstance(module.get(key), str):
            raise ConfigError(f"{display}:{mline(key)}: modules.{MODULE}.{key} must name a YAML file")

    schema, defaults = load_schema(root, env)
    params = Layered()
    params.update(defaults)
    module_path = find_file(module["config"], f"{display}:{mline('config')}", path.parent, module_dirs(root))
    model_path = find_file(module["model"], f"{display}:{mline('model')}", path.parent, model_dirs(root))
    _apply(params, load_chain(module_path, "module", module_dirs(root), env), schema)
    _apply(params, load_chain(model_path, "model", model_dirs(root), env), schema)
    overrides = module.get("overrides") or LocatedDict()
    if not isinstance(overrides, dict):
        raise ConfigError(f"{display}:{mline('overrides')}: overrides must be a mapping of keys to values")
    for key, value in overrides.items():
        line = overrides.line_of(key) if isinstance(overrides, LocatedDict) else mline("overrides")
        origin = Origin(display, line, "overrides")
        params.set(str(key), schema.check(str(key), value, str(origin)), origin)

    cli_origin = Origin("command line", None, "cli")
    for key, text in parse_cli_overrides(cli):
        if key in meta:
            meta[key] = text
            continue
        params.set(key, schema.check(key, _cli_value(schema, key, text), f"command line: --{key}"), cli_origin)
    return Experiment(
        path=path, framework=framework, module_config=module_path, model_config=model_path,
        params=params.values, origins=params.origins, defaults=defaults.values, **meta,
    )


def _module_section(data: LocatedDict, display: str) -> LocatedDict:
    modules = data.get("modules")
    if not isinstance(modules, LocatedDict) or MODULE not in modules:
        raise ConfigError(f"{display}:{data.line_of('modules')}: the experiment needs modules.{MODULE} "
                          f"(with framework, config, model and overrides)")
    extra = [k for k in modules if k != MODULE]
    if extra:
        raise ConfigError(f"{display}:{modules.line_of(extra[0])}: module {extra[0]!r} is not supported; "
                          f"primus_runtime runs one module, {MODULE}")
    module = modules[MODULE]
    if not isinstance(module, LocatedDict):
        raise ConfigError(f"{display}:{modules.line_of(MODULE)}: modules.{MODULE} must be a mapping")
    for key in module:
        if key not in MODULE_KEYS:
            raise ConfigError(f"{display}:{module.line_of(key)}: unknown key {key!r} in modules.{MODULE} "
                              f"(valid: {', '.join(MODULE_KEYS)}); trainer options go under overrides:")
    return module


def resolve_model(model: str | Path, env: Mapping[str, str] | None = None, root: Path | None = None) -> dict[str, Any]:
    """The shipped defaults with one model config (and its bases) on top, checked and typed."""
    env = dict(os.environ) if env is None else env
    root = root or config_root()
    schema, defaults = load_schema(root, env)
    params = Layered()
    params.update(defaults)
    name = str(model) if str(model).endswith((".yaml", ".yml")) else f"{model}.yaml"
    path = find_file(name, "model", Path.cwd(), model_dirs(root))
    _apply(params, load_chain(path, "model", model_dirs(root), env), schema)
    return params.values
