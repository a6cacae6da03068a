"""The trainer's typed config is the loader's schema, typed: same names, same types, no defaults of its own."""

from __future__ import annotations

import dataclasses
import os
import types
import typing

import pytest

from primus_runtime.config.loader import config_root, load_experiment, load_schema
from primus_runtime.errors import ConfigError
from primus_runtime.trainer import config
from primus_runtime.trainer.config import TrainerConfig
from tests.runtime.trainer_helpers import EXAMPLE

SECTIONS = [typing.get_type_hints(TrainerConfig)[f.name] for f in dataclasses.fields(TrainerConfig)]
_SCHEMA_NAMES = {bool: "bool", int: "int", float: "float", str: "str", tuple: "list"}


def _schema_types(annotation: object) -> tuple[set[str], bool]:
    """(schema type names, nullable) that a field's annotation stands for."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    names = {_SCHEMA_NAMES[typing.get_origin(a) or a] for a in args if a is not type(None)}
    return names, type(None) in args


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.__name__)
def test_every_field_is_a_schema_key_of_the_same_type(section: type) -> None:
    schema, _ = load_schema(config_root(), dict(os.environ))
    for item in dataclasses.fields(section):
        option = schema.options.get(item.name)
        assert option is not None, f"{section.__name__}.{item.name} is not a key of the shipped schema"
        assert item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING, \
            f"{section.__name__}.{item.name} has a default of its own; the loader supplies it"
        names, nullable = _schema_types(typing.get_type_hints(section)[item.name])
        assert (names, nullable) == (set(option.types), option.nullable), (section.__name__, item.name)


def test_built_from_the_loaded_params_and_frozen() -> None:
    params = load_experiment(EXAMPLE).params
    cfg = TrainerConfig.from_params(params)
    assert cfg.run.train_iters == params["train_iters"] and cfg.metrics.log_interval == params["log_interval"]
    assert cfg.memory.use_rocm_mem_info_iters == tuple(params["use_rocm_mem_info_iters"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 1  # type: ignore[misc]


def test_a_key_the_loader_did_not_return_is_named() -> None:
    params = dict(load_experiment(EXAMPLE).params)
    del params["save_interval"]
    with pytest.raises(ConfigError, match="'save_interval' is missing"):
        config.TrainerConfig.from_params(params)
