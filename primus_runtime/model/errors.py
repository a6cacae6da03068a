"""The model layer's one error type."""

from __future__ import annotations

from primus_runtime.errors import ConfigError


class ModelConfigError(ConfigError, ValueError):
    """An architecture config megatron.core cannot build; the message names the key to change.

    A :class:`~primus_runtime.errors.ConfigError` (the CLI prints it on one line, exit code 2) and a
    ``ValueError`` (for callers that treat it as a bad argument).
    """
