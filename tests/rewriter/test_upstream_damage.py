"""Damaged or hostile upstream inputs: one clear line or a repaired cache, never a traceback.

Covers: ``package_info.py`` is read, not run; an ambiguous sha prefix is named as such without a
fetch; a corrupt cached sdist is fetched again (from the index, without building anything); a
broken imported tree is imported again; a missing ``--sdist`` is one line; an engine-cache entry
``{}`` is discarded and recomputed; two first builds on an empty cache both succeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sample_upstream import PACKAGE, VERSION, Sample, clone_of, git, one_error_line

from rewriter import sdist as sdist_module
from rewriter.cli import main
from rewriter.errors import UpstreamError
from rewriter.upstream import load_pin, resolve

ROOT = Path(__file__).resolve().parents[2]
SDIST_NAME = f"fake_core-{VERSION}.tar.gz"


# -- package_info.py is parsed, never executed ---------------------------------------------------


def test_check_upstream_repo_does_not_run_package_info(sample: Sample, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    repo = clone_of(sample, tmp_path)
    marker = tmp_path / "package_info-ran"
    (repo / "megatron/core/package_info.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "MAJOR = 0\nMINOR = 1\nPATCH = 7\nPRE_RELEASE = 'rc1'\n"
        "VERSION = (MAJOR, MINOR, PATCH, PRE_RELEASE)\n"
        "__version__ = '.'.join(map(str, VERSION[:3])) + ''.join(VERSION[3:])\n"
    )
    git(repo, "commit", "-q", "-am", "a package_info.py with a side effect")
    sha = git(repo, "rev-parse", "HEAD")
    tree = resolve(sha, load_pin(sample.pin), sample.cache, str(repo))
    assert tree.version == "0.1.7rc1"
    assert main(sample.args("check", "--upstream-repo", str(repo), "--upstream", sha[:12], upstream=False)) == 0
    assert not marker.exists()


# -- an ambiguous sha prefix ----------------------------------------------------------------------


def test_ambiguous_prefix_is_named_without_a_fetch(sample: Sample, tmp_path: Path) -> None:
    repo = clone_of(sample, tmp_path)
    # 1500 empty commits with fixed dates: deterministic shas, some pair shares 4 leading digits
    stream = "".join(
        f"commit refs/heads/many\nmark :{i + 1}\ncommitter t <t@x> 1000000000 +0000\ndata {len(str(i))}\n{i}\n"
        + ("from refs/heads/main\n" if i == 0 else f"from :{i}\n") + "\n"
        for i in range(1500)
    )
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input=stream, text=True, check=True)
    shas = git(repo, "rev-list", "--all").split()
    by_prefix: dict[str, list[str]] = {}
    for s in shas:
        by_prefix.setdefault(s[:4], []).append(s)
    prefix, candidates = next((p, c) for p, c in sorted(by_prefix.items()) if len(c) > 1)
    logs: list[str] = []
    with pytest.raises(UpstreamError) as info:
        resolve(prefix, load_pin(sample.pin), sample.cache, str(repo), log=logs.append)
    message = str(info.value)
    assert "ambiguous" in message and "\n" not in message
    assert all(c[:12] in message for c in candidates)
    assert not [line for line in logs if line.startswith("fetching")]


# -- the sdist: fetched from the index, verified, re-fetched when the cached one is corrupt -------


class FakeIndex:
    """Serves a project page and the sample sdist; records the URLs asked for."""

    def __init__(self, sdist: Path, html: bool = False, body: bytes | None = None) -> None:
        self.sdist, self.html, self.body, self.urls = sdist, html, body, []

    def __call__(self, url: str, accept: str) -> tuple[bytes, str, str]:
        self.urls.append(url)
        if url.endswith(f"/{SDIST_NAME}"):
            return (self.body if self.body is not None else self.sdist.read_bytes()), "application/octet-stream", url
        digest = hashlib.sha256(self.sdist.read_bytes()).hexdigest()
        if self.html:
            page = f'<html><body><a href="../../files/{SDIST_NAME}#sha256={digest}">{SDIST_NAME}</a></body></html>'
            return page.encode(), "text/html", url
        files = [{"filename": SDIST_NAME, "url": f"https://files.example.invalid/x/{SDIST_NAME}",
                  "hashes": {"sha256": digest}},
                 {"filename": f"fake_core-{VERSION}-py3-none-any.whl", "url": "https://files.example.invalid/w.whl",
                  "hashes": {}}]
        return json.dumps({"files": files}).encode(), "application/vnd.pypi.simple.v1+json", url


def test_sdist_is_fetched_from_the_index_and_verified(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> None:
    index = FakeIndex(sample.upstream.sdist)
    monkeypatch.setattr(sdist_module, "http_get", index)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    tree = resolve(sample.upstream.commit, load_pin(sample.pin), sample.cache)
    assert tree.digest == sample.upstream.digest
    assert index.urls == ["https://pypi.org/simple/fake-core/", f"https://files.example.invalid/x/{SDIST_NAME}"]
    assert (sample.cache / "sdist" / SDIST_NAME).read_bytes() == sample.upstream.sdist.read_bytes()


def test_sdist_from_an_html_index_of_pip_index_url(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> None:
    index = FakeIndex(sample.upstream.sdist, html=True)
    monkeypatch.setattr(sdist_module, "http_get", index)
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example.invalid/root/simple")
    resolve(sample.upstream.commit, load_pin(sample.pin), sample.cache)
    assert index.urls == ["https://mirror.example.invalid/root/simple/fake-core/",
                          f"https://mirror.example.invalid/root/files/{SDIST_NAME}"]


def test_corrupt_cached_sdist_is_fetched_again(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = sample.cache / "sdist" / SDIST_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(sample.upstream.sdist.read_bytes()[:100])  # a truncated download
    monkeypatch.setattr(sdist_module, "http_get", FakeIndex(sample.upstream.sdist))
    logs: list[str] = []
    tree = resolve(sample.upstream.commit, load_pin(sample.pin), sample.cache, log=logs.append)
    assert tree.digest == sample.upstream.digest
    assert any(line.startswith(f"warning: the cached sdist {cached} has sha256") for line in logs)
    assert cached.read_bytes() == sample.upstream.sdist.read_bytes()


def test_download_with_the_wrong_bytes_is_one_line_and_caches_nothing(
        sample: Sample, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sdist_module, "http_get", FakeIndex(sample.upstream.sdist, body=b"not the sdist"))
    assert main(sample.args("check", upstream=False)) == 3
    one_error_line(capsys.readouterr().err, "digest mismatch", SDIST_NAME, f"{PACKAGE}=={VERSION}")
    assert not (sample.cache / "sdist" / SDIST_NAME).exists()


def test_unreachable_index_is_one_line(sample: Sample, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    def offline(url: str, accept: str) -> tuple[bytes, str, str]:
        raise sdist_module.urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(sdist_module, "http_get", offline)
    assert main(sample.args("check", upstream=False)) == 3
    one_error_line(capsys.readouterr().err, f"cannot download {PACKAGE}=={VERSION}", "name resolution", "--sdist")


def test_missing_sdist_path_is_one_line(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / SDIST_NAME
    assert main(sample.args("check", "--sdist", str(missing), upstream=False)) == 3
    one_error_line(capsys.readouterr().err, f"--sdist {missing}: no such file")


# -- damaged caches repair themselves -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["no .git", "empty HEAD", ".git is a file"])
def test_broken_git_of_the_imported_tree_is_imported_again(sample: Sample, damage: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sample.args("check")) == 0
    tree = sample.cache / "pypi" / f"{PACKAGE}-{VERSION}"
    if damage == "no .git":
        shutil.rmtree(tree / ".git")
    elif damage == "empty HEAD":
        (tree / ".git" / "HEAD").write_text("")
    else:
        shutil.rmtree(tree / ".git")
        (tree / ".git").write_text("gitdir: /nowhere\n")
    capsys.readouterr()
    assert main(sample.args("check")) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: the imported upstream {tree} is damaged") and err.count("\n") == 1, err
    assert main(sample.args("check")) == 0
    assert capsys.readouterr().err == ""


def test_empty_engine_cache_entries_are_discarded_and_recomputed(sample: Sample,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sample.args("check")) == 0
    entries = sorted((sample.build_cache / "engine").rglob("*.json"))
    assert entries
    for entry in entries:
        entry.write_text("{}")
    entries[0].write_text('{"sha": ')  # and one cut short
    first = capsys.readouterr().out
    assert main(sample.args("check")) == 0
    captured = capsys.readouterr()
    assert captured.out == first
    warnings = captured.err.splitlines()
    assert len(warnings) == len(entries)
    assert all(w.startswith("warning: build cache entry ") and w.endswith("discarding it and rebuilding")
               for w in warnings)
    assert main(sample.args("check")) == 0
    assert capsys.readouterr().err == ""  # recomputed and stored again


def test_two_first_resolves_at_once_both_succeed(sample: Sample) -> None:
    """Two processes import the sdist into the same empty cache at the same moment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    cmd = [sys.executable, "-m", "rewriter", *sample.args("check")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert results[0][0] == results[1][0]
    assert [p.name for p in (sample.cache / "pypi").iterdir() if not p.name.startswith(".lock")] == [f"{PACKAGE}-{VERSION}"]
