"""``upstream.retired_when``: a patch that backports a feature is retired where upstream has it.

Where the named upstream file has the statement, every edit of the patch reports ``already-present``
and nothing is written; where it does not, the edits apply as usual (and pass the second-pass
check). The decision is part of the engine cache key, so a cached result never answers for the
other case.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_upstream import Sample

from rewriter.cache import JsonCache
from rewriter.engine import apply_series
from rewriter.patchset.loader import load_patchsets


def series_with(sample: Sample, statement: str):
    sample.edit_patch("  note: upstream has nothing like it.\n",
                      "  note: upstream has nothing like it.\n  retired_when:\n"
                      f"    file: megatron/core/transformer/config.py\n    statement: \"{statement}\"\n")
    return load_patchsets(sample.patchsets).series()


def read(sample: Sample):
    src: Path = sample.upstream.src
    return lambda rel: (src / rel).read_text() if (src / rel).is_file() else None


@pytest.mark.parametrize("cached", [False, True])
def test_retired_where_upstream_has_the_statement(sample: Sample, tmp_path: Path, cached: bool) -> None:
    cache = JsonCache(tmp_path / "engine-cache")
    applied = apply_series(series_with(sample, "num_layers: int = 3"), read(sample), "sample", cache=cache)
    (patch,) = applied.series
    assert applied.patch_status(patch) == "applied" and applied.tree({patch.id})
    # the same file, the same edits, the other decision: not answered from the cache
    sample.edit_patch('statement: "num_layers: int = 3"', 'statement: "num_layers:   int = 2  # layers"')
    (patch,) = load_patchsets(sample.patchsets).series()
    retired = apply_series([patch], read(sample), "sample", cache=cache if cached else None)
    assert retired.patch_status(patch) == "retired"
    assert retired.tree({patch.id}) == {}
    assert {r.status for r in retired.reports} == {"already-present"}
    assert all("upstream has the feature: megatron/core/transformer/config.py has `num_layers:" in r.message
               for r in retired.reports)
