"""Every cache entry is keyed by one helper, which covers the rewriter's source and the tool versions.

The cpu-test flavor's key used to omit the libcst version: a libcst upgrade reused rewrites made
by the old parser.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_upstream import Sample

from rewriter import cache as cache_module
from rewriter.cache import JsonCache
from rewriter.cli import main
from rewriter.emit.wheel import FLAG_ENV, HELPER_SOURCE, helper_key
from rewriter.flavors.cpu_test import rewrite_tree


def with_tool_version(monkeypatch: pytest.MonkeyPatch, name: str, version: str) -> None:
    real = cache_module.tool_versions
    monkeypatch.setattr(cache_module, "tool_versions", lambda: {**real(), name: version})


def test_cpu_test_flavor_key_covers_the_libcst_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"megatron/core/m.py": "import torch\n\ntorch.cuda.synchronize()\n"}
    cache = JsonCache(tmp_path / "flavor")
    logs: list[str] = []
    first = rewrite_tree(files, cache, logs.append)
    assert rewrite_tree(files, cache, logs.append) == first
    with_tool_version(monkeypatch, "libcst", "0.0.1")
    assert rewrite_tree(files, cache, logs.append) == first
    assert [line.rsplit(", ", 1)[1] for line in logs] == ["1 to parse", "0 to parse", "1 to parse"]


def entries(build_cache: Path) -> dict[str, int]:
    return {kind: sum(1 for p in (build_cache / kind).rglob("*") if p.is_file() and p.name != "entry.json")
            for kind in ("engine", "wheels")}


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["pybind11"])
def test_a_tool_upgrade_misses_every_cache(sample: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           tool: str) -> None:
    assert main(sample.args("build", "--out", str(tmp_path / "first"))) == 0
    before = entries(sample.build_cache)
    assert all(before.values()), before
    with_tool_version(monkeypatch, tool, "99.0")
    assert main(sample.args("build", "--out", str(tmp_path / "second"))) == 0
    assert entries(sample.build_cache) == {kind: 2 * n for kind, n in before.items()}


def test_helper_key_covers_compiler_and_flags_from_the_environment(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / HELPER_SOURCE
    source.parent.mkdir(parents=True)
    source.write_text("int x;\n")
    for name in FLAG_ENV:
        monkeypatch.delenv(name, raising=False)
    keys = [helper_key(tmp_path)]
    monkeypatch.setenv("CPPFLAGS", "-O0")
    keys.append(helper_key(tmp_path))
    monkeypatch.setenv("LDFLAGS", "-Wl,--as-needed")
    keys.append(helper_key(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler++")
    keys.append(helper_key(tmp_path))
    source.write_text("int y;\n")
    keys.append(helper_key(tmp_path))
    assert len(set(keys)) == len(keys)
    with_tool_version(monkeypatch, "pybind11", "0.1")
    assert helper_key(tmp_path) != keys[-1]
