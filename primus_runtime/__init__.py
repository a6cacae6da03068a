"""primus_runtime: train Primus-configured models against the patched megatron-core wheel.

``config`` resolves experiment YAML, ``flags`` checks its Primus flags against what the
installed megatron-core was built with (``wheel_info``), ``model`` maps the config onto
megatron.core's TransformerConfig and GPTModel, and ``data`` turns JSONL corpora into Megatron's
indexed datasets. ``python -m primus_runtime`` is the command line (``cli``).

The names in ``__all__`` are the public API, for tests, benchmarks and other tools; anything else
(and every underscore name) may change without notice. They are imported on first use, so
``import primus_runtime`` imports neither torch nor megatron.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from primus_runtime.cli import main
    from primus_runtime.config.loader import Experiment, config_root, load_experiment, resolve_model
    from primus_runtime.config.registry import DocumentedFlag, load_registry
    from primus_runtime.config.schema import Origin, Schema
    from primus_runtime.errors import ConfigError, DataError, FlagError, PrimusRuntimeError
    from primus_runtime.flags import check as check_flags
    from primus_runtime.model.builder import build_gpt_model
    from primus_runtime.model.config_map import transformer_config
    from primus_runtime.model.param_count import count_parameters
    from primus_runtime.wheel_info import WheelInfo, installed_megatron_core

#: public name -> (the module that defines it, its name there)
_EXPORTS: dict[str, tuple[str, str]] = {
    "main": ("primus_runtime.cli", "main"),
    **{n: ("primus_runtime.config.loader", n) for n in ("Experiment", "config_root", "load_experiment",
                                                        "resolve_model")},
    **{n: ("primus_runtime.config.registry", n) for n in ("DocumentedFlag", "load_registry")},
    **{n: ("primus_runtime.config.schema", n) for n in ("Origin", "Schema")},
    **{n: ("primus_runtime.errors", n) for n in ("ConfigError", "DataError", "FlagError", "PrimusRuntimeError")},
    "check_flags": ("primus_runtime.flags", "check"),
    "build_gpt_model": ("primus_runtime.model.builder", "build_gpt_model"),
    "transformer_config": ("primus_runtime.model.config_map", "transformer_config"),
    "count_parameters": ("primus_runtime.model.param_count", "count_parameters"),
    **{n: ("primus_runtime.wheel_info", n) for n in ("WheelInfo", "installed_megatron_core")},
}

__all__ = [
    "ConfigError", "DataError", "DocumentedFlag", "Experiment", "FlagError", "Origin", "PrimusRuntimeError",
    "Schema", "WheelInfo", "build_gpt_model", "check_flags", "config_root", "count_parameters",
    "installed_megatron_core", "load_experiment", "load_registry", "main", "resolve_model", "transformer_config",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'primus_runtime' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(module), attribute)
