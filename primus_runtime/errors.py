"""One error tree for primus_runtime.

Every failure a user can act on is a :class:`PrimusRuntimeError`; the CLI prints its message on
one line and exits with its ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PrimusRuntimeError(Exception):
    """Base class: a failure whose message tells the user what to fix."""

    exit_code = 1


class ConfigError(PrimusRuntimeError):
    """A config file or override is wrong: bad YAML, unknown key, wrong type, missing base, …

    Messages start with ``file:line:`` (or ``command line:``) so an editor can jump there.
    """

    exit_code = 2


class FlagError(PrimusRuntimeError):
    """A configured Primus flag does not fit the installed megatron-core build."""

    exit_code = 3


class DataError(PrimusRuntimeError):
    """Input data cannot be read or converted (preprocess): names the file and line."""

    exit_code = 4
