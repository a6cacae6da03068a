"""Releases, the matrix, the semantic check and per-release edits, on the sample upstream.

Besides the sample's release 0.1.0, two more releases are made here (nothing is downloaded; the
network is switched off where a test says "offline"):

* 0.1.1: the same source with another version number: the patch applies;
* 0.2.0: ``scale()`` returns its expression directly, so the sample patch's ``y = y * 2``,
  inserted before the return, reads a ``y`` that release never defines: it *applies*, and the
  result is broken (the semantic check must say so, with file, line and name).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sample_upstream import (
    BLOCK_PY,
    PACKAGE_INFO_PY,
    PIN_FILES,
    SDIST_ONLY,
    SOURCE_TREE,
    Sample,
    make_sdist,
    one_error_line,
    sha256_of,
    write_tree,
)

from rewriter.cli import main
from rewriter.releases import append_release
from rewriter.upstream import Release, load_pin, source_digest, source_files

BLOCK = "megatron/core/transformer/block.py"
BROKEN_BLOCK = BLOCK_PY.replace("    y = x * config.hidden_size\n    return y\n", "    return x * config.hidden_size\n")


def release_sdist(tmp_path: Path, version: str, block: str = BLOCK_PY) -> tuple[Path, str]:
    """An sdist of the sample source at ``version`` (with ``block`` as block.py); its source digest."""
    patch = int(version.rsplit(".", 1)[1])
    minor = int(version.split(".")[1])
    info = PACKAGE_INFO_PY.format(patch=patch).replace("MINOR = 1", f"MINOR = {minor}")
    tree = {**SOURCE_TREE, "megatron/core/package_info.py": info, BLOCK: block}
    src = write_tree(tmp_path / f"src-{version}", {**tree, **SDIST_ONLY})
    digest_root = write_tree(tmp_path / f"digest-{version}", tree)
    sdist = make_sdist(src, tmp_path / f"fake_core-{version}.tar.gz", top=f"fake_core-{version}")
    return sdist, source_digest(digest_root, source_files(digest_root, PIN_FILES))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No package index: any download attempt fails the test."""
    def refuse(url: str, accept: str) -> tuple[bytes, str, str]:
        raise AssertionError(f"the test is offline, yet {url} was requested")

    monkeypatch.setattr("rewriter.sdist.http_get", refuse)


def add(sample: Sample, version: str, sdist: Path, *extra: str) -> int:
    return main(["releases", "add", version, "-q", "--pin", str(sample.pin), "--upstream-cache", str(sample.cache),
                 "--sdist", str(sdist), *extra])


def fill_cache(sample: Sample) -> None:
    """Import the pinned sample release into the cache, as a build does: the matrix reads every
    release from the cache (these tests are offline)."""
    assert main(sample.args("check")) == 0


# -- releases -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_release_added_by_the_command_is_checked_offline_from_the_cache(
        sample: Sample, tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    sdist, digest = release_sdist(tmp_path, "0.1.1")
    commit = sample.upstream.next_commit
    before = sample.pin.read_text()
    assert add(sample, "0.1.1", sdist, "--commit", commit.upper(), "--tag", "core_v0.1.1") == 0
    assert "0.1.1 added" in capsys.readouterr().out
    text = sample.pin.read_text()
    assert text.startswith(before)  # the comment and every existing entry stay as they were
    release = load_pin(sample.pin).find("0.1.1")
    assert release == Release("0.1.1", "core_v0.1.1", commit, sha256_of(sdist), digest)
    sdist.unlink()  # from now on only the cache has it
    assert main(sample.args("check", upstream=False) + ["--upstream-release", "0.1.1"]) == 0
    assert capsys.readouterr().out.split() == ["v0.1.0", "double_output", "applied"]
    # the recorded commit builds by sha, too (from the cached sdist, verified by the digests)
    assert main(sample.args("check", upstream=False) + ["--upstream", commit[:10]]) == 0
    # adding it again changes nothing; listing shows it cached
    assert add(sample, "0.1.1", tmp_path / "gone.tar.gz", "--commit", commit) == 0
    assert sample.pin.read_text() == text
    assert "0.1.1 already listed, verified" in capsys.readouterr().out
    assert main(["releases", "list", "--pin", str(sample.pin), "--upstream-cache", str(sample.cache)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["version", "kind", "supported", "tag", "commit", "cached"]
    assert ["0.1.1", "release", "no", "core_v0.1.1", commit, "sdist+tree"] in rows
    assert ["0.1.0", "pinned", "yes"] == rows[1][:3]


def fake_index(monkeypatch: pytest.MonkeyPatch, sdist: Path, stated: str) -> list[str]:
    """A package index (PEP 503 HTML) that lists ``sdist`` with the sha256 ``stated``; returns the
    URLs asked for."""
    asked: list[str] = []

    def get(url: str, accept: str) -> tuple[bytes, str, str]:
        asked.append(url)
        if url.endswith("/fake-core/"):
            page = f'<a href="../../files/{sdist.name}#sha256={stated}">{sdist.name}</a>'
            return page.encode(), "text/html", url
        assert url == f"https://index.invalid/files/{sdist.name}", url
        return sdist.read_bytes(), "application/octet-stream", url

    monkeypatch.setenv("PIP_INDEX_URL", "https://index.invalid/simple/")
    monkeypatch.setattr("rewriter.sdist.http_get", get)
    return asked


def test_release_is_downloaded_from_the_index(sample: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sdist, digest = release_sdist(tmp_path, "0.1.1")
    asked = fake_index(monkeypatch, sdist, sha256_of(sdist))
    assert main(["releases", "add", "0.1.1", "-q", "--pin", str(sample.pin), "--upstream-cache", str(sample.cache)]) == 0
    assert asked == ["https://index.invalid/simple/fake-core/", f"https://index.invalid/files/{sdist.name}"]
    assert load_pin(sample.pin).find("0.1.1") == Release("0.1.1", "core_v0.1.1", "", sha256_of(sdist), digest)


def test_download_that_differs_from_the_index_is_refused(sample: Sample, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    sdist, _ = release_sdist(tmp_path, "0.1.1")
    fake_index(monkeypatch, sdist, "0" * 64)
    before = sample.pin.read_text()
    assert main(["releases", "add", "0.1.1", "-q", "--pin", str(sample.pin), "--upstream-cache", str(sample.cache)]) == 3
    one_error_line(capsys.readouterr().err, "digest mismatch", "the index states " + "0" * 64)
    assert sample.pin.read_text() == before


def test_release_without_commit_goes_to_the_testbed(sample: Sample, tmp_path: Path, offline: None) -> None:
    sdist, _ = release_sdist(tmp_path, "0.1.1")
    assert add(sample, "0.1.1", sdist) == 0
    data = yaml.safe_load(sample.pin.read_text())
    assert data["testbed"] == [{"version": "0.1.1", "tag": "core_v0.1.1", "sdist_sha256": sha256_of(sdist),
                                "source_digest": load_pin(sample.pin).find("0.1.1").source_digest}]


@pytest.mark.parametrize("commit", ["abc1234", "g" * 40])
def test_commit_must_be_a_full_sha(sample: Sample, tmp_path: Path, commit: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    sdist, _ = release_sdist(tmp_path, "0.1.1")
    before = sample.pin.read_text()
    assert add(sample, "0.1.1", sdist, "--commit", commit) == 2
    one_error_line(capsys.readouterr().err, "full 40-digit git sha", repr(commit))
    assert sample.pin.read_text() == before
    assert not (sample.cache / "sdist").exists()


def test_a_listed_release_is_not_silently_changed(sample: Sample, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert add(sample, "0.1.0", sample.upstream.sdist, "--commit", "f" * 40) == 3
    one_error_line(capsys.readouterr().err, "release 0.1.0 is already listed", "edit the entry by hand")


def test_append_keeps_comments_and_list_style() -> None:
    text = "# head\nrepository: r\nreleases:\n- version: '1.0.0'  # first\n  tag: t\n# between\npinned: 1.0.0\n"
    release = Release("1.1.0", "t1", "a" * 40, "b" * 64, "sha256:c")
    out = append_release(text, release)
    assert out.startswith("# head\nrepository: r\nreleases:\n- version: '1.0.0'  # first\n  tag: t\n- version: \"1.1.0\"\n")
    assert out.endswith("# between\npinned: 1.0.0\n")
    assert [r["version"] for r in yaml.safe_load(out)["releases"]] == ["1.0.0", "1.1.0"]
    testbed = append_release(text, Release("0.9.0", "t0", "", "d" * 64, "sha256:e", supported=True))
    assert yaml.safe_load(testbed)["testbed"] == [
        {"version": "0.9.0", "tag": "t0", "sdist_sha256": "d" * 64, "source_digest": "sha256:e", "supported": True}]


# -- the semantic check: applied, yet broken ----------------------------------------------------------


@pytest.mark.slow
def test_broken_edit_is_classified_broken(sample: Sample, tmp_path: Path, offline: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """On 0.2.0 the anchor (scale's return) is there, so the edit applies: the code is still wrong."""
    fill_cache(sample)
    sdist, _ = release_sdist(tmp_path, "0.2.0", BROKEN_BLOCK)
    assert add(sample, "0.2.0", sdist, "--commit", "e" * 40) == 0
    capsys.readouterr()
    assert main(sample.args("check", upstream=False) + ["--upstream-release", "0.2.0"]) == 4
    captured = capsys.readouterr()
    assert captured.out.split()[:3] == ["v0.1.0", "double_output", "broken"]
    one_error_line(captured.err, "1 patch(es) do not build", f"double_output: broken: {BLOCK}:",
                   "undefined name 'y'", "releases:")
    out = tmp_path / "out"
    assert main(sample.args("build", upstream=False) + ["--upstream-release", "0.2.0", "--out", str(out)]) == 4
    one_error_line(capsys.readouterr().err, "1 problem(s) in the patched code", f"{BLOCK}:", "undefined name 'y'",
                   "(patch double_output)")
    assert not out.exists()
    assert main(sample.args("matrix", upstream=False) + ["--format", "json"]) == 0  # 0.2.0 is not supported
    columns = {c["release"]: c for c in json.loads(capsys.readouterr().out)["releases"]}
    assert set(columns) == {"0.1.0", "0.2.0"}
    (good,) = columns["0.1.0"]["verdicts"]
    (bad,) = columns["0.2.0"]["verdicts"]
    assert (good["verdict"], bad["verdict"]) == ("applied", "broken")
    line = next(n for n, text in enumerate(_patched_block(sample, tmp_path).splitlines(), 1) if "y = y * 2" in text)
    assert bad["reason"] == f"{BLOCK}:{line}: undefined name 'y' (patch double_output)"


def _patched_block(sample: Sample, tmp_path: Path) -> str:
    """block.py of 0.2.0 as the patch leaves it (the diff command shows the patched text)."""
    from rewriter.engine import apply_series
    from rewriter.patchset.loader import load_patchsets
    from rewriter.upstream import resolve_release

    tree = resolve_release("0.2.0", load_pin(sample.pin), sample.cache)
    result = apply_series(load_patchsets(sample.patchsets).series(), tree.read, tree.label, version="0.2.0")
    return result.tree({"double_output"})[BLOCK]


def test_imports_from_a_folder_without_init_resolve_through_its_modules() -> None:
    """``from megatron.core._primus import pp_dump``: the series creates ``_primus/`` as a namespace
    package (no ``__init__.py``); the import resolves where ``pp_dump.py`` exists, not otherwise."""
    from rewriter.semantic import _unresolved

    files = {"megatron/core/_primus/pp_dump.py": "def start():\n    pass\n"}
    assert _unresolved("megatron.core._primus", "pp_dump", files.get) == ""
    assert _unresolved("megatron.core._primus.pp_dump", "start", files.get) == ""
    assert "does not exist" in _unresolved("megatron.core._primus", "zero_bubble", files.get)
    assert "does not define it" in _unresolved("megatron.core._primus.pp_dump", "end", files.get)


@pytest.mark.slow
def test_matrix_fails_on_a_supported_release_and_is_cached(sample: Sample, tmp_path: Path, offline: None,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    fill_cache(sample)
    sdist, _ = release_sdist(tmp_path, "0.2.0", BROKEN_BLOCK)
    assert add(sample, "0.2.0", sdist, "--commit", "e" * 40, "--supported") == 0
    capsys.readouterr()
    assert main(sample.args("matrix", upstream=False)) == 4
    captured = capsys.readouterr()
    one_error_line(captured.err, "supported release(s) 0.2.0 do not build with v0.1.0")
    assert "| `double_output` (v0.1.0) | applied | broken |" in captured.out
    assert "| **release** | passes | **fails** |" in captured.out
    assert "- 0.2.0 `double_output`: **broken**: megatron/core/transformer/block.py:" in captured.out
    # nothing changed: the second run is answered from the cache, without applying anything
    monkeypatch.setattr("rewriter.matrix.apply_to_release", _must_not_run)
    assert main(sample.args("matrix", upstream=False)) == 4
    assert capsys.readouterr().out == captured.out
    # a changed patch is a changed input: applied again
    sample.edit_patch("vars: {factor: 2}", "vars: {factor: 3}")
    assert main(sample.args("matrix", upstream=False)) == 123  # the bug exit: _must_not_run was called
    assert "apply_to_release ran" in capsys.readouterr().err


def _must_not_run(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("apply_to_release ran")


# -- per-release edits ------------------------------------------------------------------------------


VARIANT = """\
    vars: {factor: 2}
    variants:
      - releases: ">=0.2"
        where: start
        code: "x = x * {{ vars.factor }}\\n"
"""


@pytest.mark.slow
def test_variant_makes_one_patchset_fit_two_releases(sample: Sample, tmp_path: Path, offline: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """0.2.0 has no ``y``: its variant doubles ``x`` at the start instead; the manifest says which ran."""
    fill_cache(sample)
    sdist, _ = release_sdist(tmp_path, "0.2.0", BROKEN_BLOCK)
    assert add(sample, "0.2.0", sdist, "--commit", "e" * 40) == 0
    sample.edit_patch("    template: double.py.j2\n    vars: {factor: 2}\n",
                      "    template: double.py.j2\n" + VARIANT)
    capsys.readouterr()
    assert main(sample.args("matrix", upstream=False) + ["--format", "json"]) == 0
    columns = {c["release"]: c["verdicts"][0] for c in json.loads(capsys.readouterr().out)["releases"]}
    assert columns["0.1.0"]["verdict"] == columns["0.2.0"]["verdict"] == "applied"
    assert columns["0.1.0"]["variants"] == {}
    assert columns["0.2.0"]["variants"] == {"1": "variants[0]"}
    out = tmp_path / "out-0.2.0"
    assert main(sample.args("build", upstream=False) + ["--upstream-release", "0.2.0", "--no-wheel",
                                                        "--out", str(out)]) == 0
    edits = json.loads((out / "manifest.json").read_text())["patches"][0]["edits"]
    assert [(e["status"], e["variant"]) for e in edits] == [("applied", "default"), ("applied", "variants[0]")]
    diff = (out / "diffs" / "patches" / "v0.1.0" / "001-double_output.diff").read_text()
    assert "+        x = x * 2\n" in diff and "y = y * 2" not in diff


def test_edit_limited_to_other_releases_is_not_applicable(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    sample.edit_patch("    template: double.py.j2\n", "    template: double.py.j2\n    releases: \">=0.2\"\n")
    out = sample.out
    assert main(sample.args("build", "--no-wheel", "--out", str(out))) == 0
    edits = json.loads((out / "manifest.json").read_text())["patches"][0]["edits"]
    assert [e["status"] for e in edits] == ["applied", "not-applicable"]
    assert "y = y" not in (out / "diffs" / "versions" / "v0.1.0.upstream.diff").read_text()


@pytest.mark.parametrize(("yaml_text", "needle"), [
    ("    releases: \"0.2\"\n", "releases '0.2' is not a version range"),
    ("    variants:\n      - where: start\n", "variants[0] must be a mapping with 'releases'"),
    ("    variants:\n      - releases: \"<1\"\n        op: add_module\n", "variants[0] cannot change 'op'"),
    ("    variants:\n      - releases: \"<1\"\n        wher: start\n", "unknown key 'wher'"),
])
def test_bad_release_keys_are_refused(sample: Sample, yaml_text: str, needle: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    sample.edit_patch("    template: double.py.j2\n", "    template: double.py.j2\n" + yaml_text)
    assert main(sample.args("check")) == 2
    one_error_line(capsys.readouterr().err, "patch.yaml:", needle)


# -- the matrix in docs/ ----------------------------------------------------------------------------


def test_docs_check_finds_a_stale_matrix(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    fill_cache(sample)
    assert main(sample.args("docs", upstream=False)) == 0
    assert main(sample.args("matrix", "--write-docs", upstream=False)) == 0
    doc = sample.root / "docs" / "release-matrix.md"
    assert "| `double_output` (v0.1.0) | applied |" in doc.read_text()
    assert main(sample.args("docs", "--check", upstream=False)) == 0
    sample.edit_patch("vars: {factor: 2}", "vars: {factor: 3}")
    capsys.readouterr()
    for command in (["docs"], ["docs", "--check"]):  # docs cannot regenerate it offline: both say so
        assert main(sample.args(*command, upstream=False)) == 1
        one_error_line(capsys.readouterr().err, "release-matrix.md is stale", "matrix --write-docs")



def test_patch_limited_to_other_releases_is_not_targeted_in_the_matrix(sample: Sample,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Both edits limited to releases the pin does not have: the matrix says ``not-targeted`` (a
    passing verdict: the release still passes), not ``retired`` (which says upstream has it)."""
    fill_cache(sample)
    sample.edit_patch("    flag: double_output\n", "    flag: double_output\n    releases: \">=9\"\n")
    sample.edit_patch("    template: double.py.j2\n", "    template: double.py.j2\n    releases: \">=9\"\n")
    capsys.readouterr()
    assert main(sample.args("matrix", upstream=False) + ["--format", "json"]) == 0
    verdict = json.loads(capsys.readouterr().out)["releases"][0]["verdicts"][0]
    assert verdict["verdict"] == "not-targeted"
    assert "every edit is limited to other releases" in verdict["reason"]
