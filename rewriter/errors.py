"""One error tree for the rewriter.

Every failure a user can act on is a :class:`RewriterError`; the CLI prints its message on one
line and exits with the code in :data:`EXIT_CODES`. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class RewriterError(Exception):
    """Base class: a failure whose message tells the user what to fix."""

    exit_code = 4


class UsageError(RewriterError):
    """Command-line options that do not go together."""

    exit_code = 2


class PatchsetError(RewriterError):
    """A patchset file is malformed: bad YAML, unknown key, wrong type, missing template, …"""

    exit_code = 2


class UpstreamError(RewriterError):
    """The upstream source cannot be resolved or verified (unknown sha, digest mismatch, dirty tree)."""

    exit_code = 3


class DriftError(RewriterError):
    """An edit's anchor is missing or matches a different number of times than declared."""

    exit_code = 4


class ApplyError(RewriterError):
    """An edit could not be applied (template does not parse, second pass is not a no-op, …)."""

    exit_code = 4


class EmitError(RewriterError):
    """Writing outputs failed: output directory not writable, wheel build failed, …"""

    exit_code = 4


class StaleError(RewriterError):
    """``--check`` found generated files that differ from what the patchsets produce."""

    exit_code = 1
