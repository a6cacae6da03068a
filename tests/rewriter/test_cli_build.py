"""The CLI end to end on the sample upstream: build, drift, output safety, docs, diff, check."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from sample_upstream import (
    PATCH_YAML,
    PATCHED_LINE,
    Sample,
    assert_untouched,
    leftovers,
    line_of,
    one_error_line,
    snapshot,
)

from rewriter.cli import main
from tests.procs import run_python

WHEEL = "megatron_core-0.1.0+primus.v0.1.0-py3-none-any.whl"
BLOCK = "megatron/core/transformer/block.py"
PATCH = "patchsets/v0.1.0/double_output/patch.yaml"


def build(sample: Sample, out: Path, *extra: str, cache: bool = True) -> int:
    return main(sample.args("build", "--out", str(out), *extra, cache=cache))


def drift_stderr(err: str) -> str:
    """The drift error's text; it starts with ``error:`` (see test_drift_error_is_one_line)."""
    assert err.startswith("error: "), err
    return err


# -- a good build -------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_end_to_end(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(sample, sample.out) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # -q
    assert captured.out.strip() == str(sample.out)
    assert {p.name for p in sample.out.iterdir()} == {"diffs", "manifest.json", "report.json", WHEEL}
    assert leftovers(sample.out) == []

    manifest = json.loads((sample.out / "manifest.json").read_text())
    assert manifest["package"] == {"name": "megatron-core", "version": "0.1.0+primus.v0.1.0"}
    assert manifest["upstream"]["commit"] == sample.upstream.commit
    assert manifest["upstream"]["source_digest"] == sample.upstream.digest
    assert manifest["patchset"] == {"version": "v0.1.0", "versions": ["v0.1.0"]}
    (patch,) = manifest["patches"]
    assert (patch["id"], patch["status"], patch["flags"]) == ("double_output", "applied", ["double_output"])
    assert [e["status"] for e in patch["edits"]] == ["applied", "applied"]
    assert [f["name"] for f in manifest["flags"]] == ["double_output"]

    report = json.loads((sample.out / "report.json").read_text())
    assert report["upstream"]["origin"] == "pypi-sdist"
    assert report["patches"] == {"double_output": "applied"}
    assert [(e["op"], e["status"], e["source"]) for e in report["edits"]] == [
        ("add_config_field", "applied", f"{PATCH}:{line_of(PATCH_YAML, 'op: add_config_field')}"),
        ("insert_statements", "applied", f"{PATCH}:{line_of(PATCH_YAML, 'op: insert_statements')}"),
    ]

    patch_diff = (sample.out / "diffs" / "patches" / "v0.1.0" / "001-double_output.diff").read_text()
    assert f"diff --git a/{BLOCK} b/{BLOCK}\n" in patch_diff
    assert PATCHED_LINE in patch_diff.splitlines(keepends=True)
    assert "+    double_output: bool = False\n" in patch_diff
    versions = sample.out / "diffs" / "versions"
    assert (versions / "v0.1.0.upstream.diff").read_text() == patch_diff
    assert (versions / "v0.1.0.previous.diff").read_text() == patch_diff

    with zipfile.ZipFile(sample.out / WHEEL) as whl:
        names = whl.namelist()
        assert "megatron/core/_primus/__init__.py" in names
        assert "megatron/core/_primus/manifest.json" in names
        assert "megatron/__init__.py" not in names  # namespace package, as upstream
        assert json.loads(whl.read("megatron/core/_primus/manifest.json")) == manifest
        assert "PRE_RELEASE = '+primus.v0.1.0'" in whl.read("megatron/core/package_info.py").decode()
        assert "        y = y * 2\n" in whl.read(BLOCK).decode()
        metadata = whl.read("megatron_core-0.1.0+primus.v0.1.0.dist-info/METADATA").decode()
        assert "\nVersion: 0.1.0+primus.v0.1.0\n" in metadata
        whl.extractall(tmp_path / "installed")

    # the patched package works: flag off is upstream, flag on is the patch, bad values fail early
    check = """
import megatron.core
from megatron.core.package_info import __version__
from megatron.core._primus import FLAGS, PATCHSET_VERSION, manifest
from megatron.core.transformer.block import scale
from megatron.core.transformer.config import ModelConfig
assert __version__ == "0.1.0+primus.v0.1.0", __version__
assert scale(ModelConfig(), 3) == 48
assert scale(ModelConfig(double_output=True), 3) == 96
try:
    ModelConfig(double_output="yes")
except TypeError:
    pass
else:
    raise AssertionError("no type check")
assert PATCHSET_VERSION == "v0.1.0" and FLAGS["double_output"]["default"] is False
assert manifest()["patches"][0]["status"] == "applied"
"""
    run_python("-c", check, cwd=tmp_path / "installed")


@pytest.mark.slow
def test_build_is_byte_identical_without_cache(sample: Sample, tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "out", tmp_path / "b" / "out"
    assert build(sample, first, cache=False) == 0
    sample.cache = tmp_path / "fresh-upstream-cache"  # the second build imports the sdist again
    assert build(sample, second, cache=False) == 0
    assert not sample.build_cache.exists()
    assert snapshot(first) == snapshot(second)
    assert (first / WHEEL).read_bytes() == (second / WHEEL).read_bytes()


@pytest.mark.slow
def test_cached_rebuild_gives_the_same_bytes(sample: Sample, tmp_path: Path) -> None:
    assert build(sample, sample.out) == 0
    assert (sample.build_cache / "wheels").is_dir() and (sample.build_cache / "engine").is_dir()
    assert build(sample, tmp_path / "again") == 0
    assert snapshot(sample.out) == snapshot(tmp_path / "again")


@pytest.mark.slow
def test_rebuild_replaces_previous_output(sample: Sample) -> None:
    sample.out.mkdir(parents=True)
    (sample.out / "stale.txt").write_text("from an older build\n")
    assert build(sample, sample.out) == 0
    assert not (sample.out / "stale.txt").exists()
    assert (sample.out / WHEEL).is_file()
    assert leftovers(sample.out) == []


# -- drift: the build stops before writing anything ---------------------------------------------


def test_missing_anchor_exits_4(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    text = sample.edit_patch("    where: before_return\n",
                             "    where: after\n    anchor: y = x * config.hidden_sizes\n")
    assert build(sample, sample.out) == 4
    err = drift_stderr(capsys.readouterr().err)
    assert "1 edit(s) do not apply to upstream" in err
    assert f"patch double_output edits[1] (insert_statements) at {BLOCK}::scale: anchor-missing" in err
    assert "(nearest: y = x * config.hidden_size) [" in err
    assert f"[{PATCH}:{line_of(text, 'op: insert_statements')}]" in err
    assert_untouched(sample.out)


def test_missing_target_names_nearest_definitions(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    sample.edit_patch("    target: scale\n", "    target: scael\n")
    assert build(sample, sample.out) == 4
    err = drift_stderr(capsys.readouterr().err)
    assert f"patch double_output edits[1] (insert_statements) at {BLOCK}::scael: anchor-missing" in err
    assert "target 'scael' not found (nearest: scale)" in err
    assert_untouched(sample.out)


def test_ambiguous_anchor_exits_4(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    sample.edit_patch("    target: scale\n    where: before_return\n",
                      "    target: shift\n    where: after\n    anchor: x = x + 1\n")
    assert build(sample, sample.out) == 4
    err = drift_stderr(capsys.readouterr().err)
    assert f"patch double_output edits[1] (insert_statements) at {BLOCK}::shift: ambiguous" in err
    assert "anchor 'x = x + 1' matches 2 times in shift, patch expects 1" in err
    assert_untouched(sample.out)


def test_ambiguous_anchor_with_matching_expect_applies(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    sample.edit_patch("    target: scale\n    where: before_return\n",
                      "    target: shift\n    where: after\n    anchor: x = x + 1\n    expect: 2\n")
    # shift() has no ``y``: the code it gets doubles ``x`` (else the semantic check says "broken")
    sample.edit_patch("    template: double.py.j2\n", "    code: \"x = x * {{ vars.factor }}\\n\"\n")
    assert main(sample.args("check")) == 0
    assert "double_output" in capsys.readouterr().out


def test_drift_error_is_one_line(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    """Every error is ONE line on stderr, drift errors too: patch, file, target, nearest candidate."""
    sample.edit_patch("    target: scale\n", "    target: scael\n")
    assert build(sample, sample.out) == 4
    one_error_line(capsys.readouterr().err, "double_output", BLOCK, "scael", "nearest: scale")


# -- output safety ------------------------------------------------------------------------------


def test_output_parent_is_a_file_exits_4(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    out = blocker / "out"
    assert build(sample, out) == 4
    one_error_line(capsys.readouterr().err, f"output directory {out} is not writable", str(blocker))
    assert blocker.read_text() == "a file, not a folder\n"
    assert not sample.cache.exists()  # failed before any work


def test_output_that_is_a_file_is_not_replaced(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Used to build, move the file aside as .out.txt-old-*, put the folder in its place and leave that file."""
    out = tmp_path / "out.txt"
    out.write_text("not an output folder\n")
    code = build(sample, out)
    err = capsys.readouterr().err
    assert out.is_file() and out.read_text() == "not an output folder\n", "--out FILE was replaced by a folder"
    assert code == 4
    one_error_line(err, f"output directory {out} exists and is not a directory")
    assert leftovers(out) == []


@pytest.mark.slow
def test_failed_build_keeps_previous_output(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(sample, sample.out) == 0
    before = snapshot(sample.out)
    assert before is not None and WHEEL in before
    capsys.readouterr()

    sample.edit_patch("    target: scale\n", "    target: scael\n")  # drift
    assert build(sample, sample.out) == 4
    drift_stderr(capsys.readouterr().err)
    assert_untouched(sample.out, before)

    assert build(sample, sample.out, "--upstream", "abcdef12") == 3  # upstream error
    one_error_line(capsys.readouterr().err, "unknown upstream sha 'abcdef12'")
    assert_untouched(sample.out, before)


# -- docs, diff, check --------------------------------------------------------------------------


def test_docs_check_and_write(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    notes = sample.root / "docs" / "patch-notes.md"
    assert main(sample.args("docs", "--check", upstream=False)) == 1
    one_error_line(capsys.readouterr().err, f"{notes} is stale", "python -m rewriter docs")
    assert not notes.exists()  # --check writes nothing

    assert main(sample.args("docs", upstream=False)) == 0
    text = notes.read_text()
    assert "| `double_output` | `false` | v0.1.0 | Multiply the output of scale() by a factor." in text
    assert "`megatron.core.transformer.block.scale`" in text
    assert main(sample.args("docs", "--check", upstream=False)) == 0
    assert capsys.readouterr().err == ""

    sample.edit_patch("description: Multiply the output", "description: Scale the output")
    assert main(sample.args("docs", "--check", upstream=False)) == 1
    one_error_line(capsys.readouterr().err, "is stale")
    assert notes.read_text() == text


def test_diff_against_upstream(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sample.args("diff", "v0.1.0", "--against", "upstream")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines(keepends=True)
    assert f"diff --git a/{BLOCK} b/{BLOCK}\n" in lines
    assert "diff --git a/megatron/core/transformer/config.py b/megatron/core/transformer/config.py\n" in lines
    assert PATCHED_LINE in lines
    assert not sample.out.exists()  # diff writes no outputs
    assert main(sample.args("diff", "v0.1.0")) == 0  # the first version's previous is upstream
    assert capsys.readouterr().out == captured.out


def _add_v020(sample: Sample) -> None:
    patch = (PATCH_YAML.replace("double_output", "shift_more").replace("version: v0.1.0", "version: v0.2.0")
             .replace("target: scale", "target: shift"))
    sample.write_patchsets({
        "v0.2.0/series.yaml": "version: v0.2.0\nsummary: Second.\npatches:\n  - shift_more\n",
        "v0.2.0/shift_more/patch.yaml": patch,
        "v0.2.0/shift_more/double.py.j2": "x = x * {{ vars.factor }}\n",
    })


def test_diff_against_previous_version(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    _add_v020(sample)
    assert main(sample.args("diff", "v0.2.0")) == 0
    previous = capsys.readouterr().out
    assert "+        x = x * 2\n" in previous
    assert PATCHED_LINE not in previous.splitlines(keepends=True)
    assert main(sample.args("diff", "v0.2.0", "--against", "upstream")) == 0
    upstream = capsys.readouterr().out
    assert "+        x = x * 2\n" in upstream and PATCHED_LINE in upstream.splitlines(keepends=True)


def test_diff_unknown_version_exits_2(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sample.args("diff", "v7.0.0")) == 2
    one_error_line(capsys.readouterr().err, "unknown patchset version 'v7.0.0' (known: v0.1.0)")


def test_build_without_versions_exits_2(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    sample.write_patchsets({}, replace=True)
    sample.patchsets.mkdir()
    assert build(sample, sample.out) == 2
    one_error_line(capsys.readouterr().err, f"{sample.patchsets}: no patchset versions to build")
    assert_untouched(sample.out)


def test_check_lists_patch_status(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    _add_v020(sample)
    assert main(sample.args("check")) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split() for line in out] == [["v0.1.0", "double_output", "applied"],
                                               ["v0.2.0", "shift_more", "applied"]]


def test_check_with_git_upstream(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    args = sample.args("check", upstream=False) + ["--upstream-repo", str(sample.upstream.repo),
                                                   "--upstream", sample.upstream.next_commit[:9]]
    assert main(args) == 0
    assert capsys.readouterr().out.split() == ["v0.1.0", "double_output", "applied"]


def test_docs_write_the_flag_registry_the_runtime_reads(sample: Sample) -> None:
    from primus_runtime.config.registry import load_registry

    assert main(sample.args("docs", upstream=False)) == 0
    (flag,) = load_registry(sample.root / "configs" / "flags.yaml").values()
    assert (flag.name, flag.type, flag.default, flag.version, flag.scope, flag.implemented) == (
        "double_output", "bool", False, "v0.1.0", "core", True)

    sample.edit_patch("    default: false\n", "    default: false\n    primus_default: true\n")
    assert main(sample.args("docs", "--check", upstream=False)) == 1
    assert main(sample.args("docs", upstream=False)) == 0
    (flag,) = load_registry(sample.root / "configs" / "flags.yaml").values()
    assert (flag.default, flag.upstream_values) == (True, (False,))


def test_docs_render_the_operations_table(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    from rewriter.emit.docs import OPS_BEGIN, OPS_END

    page = sample.root / "docs" / "patchset-format.md"
    page.parent.mkdir(parents=True)
    page.write_text(f"# Format\n\n{OPS_BEGIN}\n| stale |\n{OPS_END}\n\nmore\n", encoding="utf-8")
    assert main(sample.args("docs", "--check", upstream=False)) == 1
    assert f"{page} is stale" in capsys.readouterr().err
    assert main(sample.args("docs", upstream=False)) == 0
    text = page.read_text(encoding="utf-8")
    assert "| stale |" not in text and text.endswith(f"{OPS_END}\n\nmore\n")
    assert "| `route_function` | `target` (function), `to` (`module:function`), `guard` |" in text
    assert main(sample.args("docs", "--check", upstream=False)) == 0

    page.write_text("# Format without the markers\n", encoding="utf-8")
    assert main(sample.args("docs", upstream=False)) == 2
    assert "needs the lines" in capsys.readouterr().err
