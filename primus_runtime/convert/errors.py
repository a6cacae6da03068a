"""The conversion's one error type: a user can act on it (exit 6)."""

from __future__ import annotations

from primus_runtime.errors import PrimusRuntimeError


class ConversionError(PrimusRuntimeError):
    """A checkpoint or config that cannot be converted; the message names the file, key or tensor."""

    exit_code = 6
