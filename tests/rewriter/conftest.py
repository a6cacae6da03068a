"""Fixtures: the sample upstream (sdist, git repository, pin) and one project per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_upstream import WITH_HELPER, Sample, SampleUpstream, make_upstream


@pytest.fixture(scope="session")
def sample_upstream(tmp_path_factory: pytest.TempPathFactory) -> SampleUpstream:
    """The fake upstream: generated once per session, never modified by a test."""
    return make_upstream(tmp_path_factory.mktemp("sample-upstream"))


@pytest.fixture(scope="session")
def helper_upstream(tmp_path_factory: pytest.TempPathFactory) -> SampleUpstream:
    """The fake upstream with a compiled dataset helper (a pybind11 extension, as upstream's)."""
    return make_upstream(tmp_path_factory.mktemp("helper-upstream"), WITH_HELPER)


@pytest.fixture
def sample(tmp_path: Path, sample_upstream: SampleUpstream, monkeypatch: pytest.MonkeyPatch) -> Sample:
    """A project under tmp_path: the pin, the sample patchsets, empty caches; --out not created."""
    return _project(tmp_path, sample_upstream, monkeypatch)


@pytest.fixture
def helper_sample(tmp_path: Path, helper_upstream: SampleUpstream, monkeypatch: pytest.MonkeyPatch) -> Sample:
    """Like ``sample``, from the upstream with a compiled helper."""
    return _project(tmp_path, helper_upstream, monkeypatch)


def _project(tmp_path: Path, upstream: SampleUpstream, monkeypatch: pytest.MonkeyPatch) -> Sample:
    monkeypatch.delenv("PRIMUS_REWRITER_CACHE", raising=False)
    root = tmp_path / "project"
    root.mkdir()
    s = Sample(
        upstream=upstream,
        root=root,
        pin=root / "upstream.yaml",
        patchsets=root / "patchsets",
        cache=tmp_path / "upstream-cache",
        build_cache=tmp_path / "build-cache",
        out=tmp_path / "outputs" / "out",
    )
    s.write_pin()
    s.write_patchsets()
    return s
