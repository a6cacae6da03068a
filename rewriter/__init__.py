"""primus-rewriter: apply versioned, flag-gated patchsets to a pinned megatron-core source.

Data flow: :mod:`rewriter.upstream` (pinned source) + :mod:`rewriter.patchset` (YAML and
templates) → :mod:`rewriter.engine` (libcst operations in :mod:`rewriter.ops`) →
:mod:`rewriter.emit` (staging tree, wheel, diffs, manifest, docs).
"""

__version__ = "0.1.0"
