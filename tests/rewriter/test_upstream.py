"""Resolving and verifying the upstream: the PyPI sdist path and the git path."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import git
import pytest
from sample_upstream import (
    PACKAGE,
    TAG,
    VERSION,
    Sample,
    assert_untouched,
    make_sdist,
    one_error_line,
    sha256_of,
    write_tree,
)

from rewriter.cli import main
from rewriter.errors import UpstreamError
from rewriter.upstream import load_pin, resolve, source_digest, source_files

BLOCK = "megatron/core/transformer/block.py"


def resolve_pypi(sample: Sample, sha: str | None = None, sdist: Path | None = None, log: list[str] | None = None):
    logs = log if log is not None else []
    return resolve(sha or sample.upstream.commit, load_pin(sample.pin), sample.cache, None,
                   sdist or sample.upstream.sdist, logs.append)


def resolve_git(sample: Sample, sha: str, log: list[str] | None = None):
    logs = log if log is not None else []
    return resolve(sha, load_pin(sample.pin), sample.cache, str(sample.upstream.repo), None, logs.append)


def upstream_error(call) -> str:
    with pytest.raises(UpstreamError) as info:
        call()
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "\n" not in message
    return message


def tampered_sdist(sample: Sample, tmp_path: Path) -> Path:
    """The sample sdist with one pinned source file changed."""
    src = tmp_path / "tampered-src"
    with tarfile.open(sample.upstream.sdist) as tar:
        tar.extractall(src, filter="data")
    (top,) = src.iterdir()
    write_tree(top, {BLOCK: (top / BLOCK).read_text() + "# tampered\n"})
    return make_sdist(top, tmp_path / f"fake_core-{VERSION}.tar.gz")


# -- PyPI sdist ---------------------------------------------------------------------------------


def test_pypi_sdist_is_imported_into_a_git_repository(sample: Sample) -> None:
    logs: list[str] = []
    tree = resolve_pypi(sample, log=logs)
    assert tree.origin == "pypi-sdist"
    assert tree.commit == sample.upstream.commit
    assert (tree.version, tree.tag, tree.digest) == (VERSION, TAG, sample.upstream.digest)
    assert tree.root == sample.cache / "pypi" / f"{PACKAGE}-{VERSION}"
    assert any("importing" in line for line in logs)
    repo = git.Repo(tree.root)
    assert not repo.is_dirty(untracked_files=True)
    assert repo.tags[0].name == TAG
    # only the pinned files, byte for byte: PKG-INFO (sdist only) is not imported
    assert tree.files == source_files(sample.upstream.src, load_pin(sample.pin).files)
    assert not (tree.root / "PKG-INFO").exists()
    assert tree.read(BLOCK) == (sample.upstream.src / BLOCK).read_text()
    assert tree.read("megatron/core/nope.py") is None
    assert source_digest(tree.root, tree.files) == sample.upstream.digest
    assert [p.name for p in (sample.cache / "pypi").iterdir()] == [tree.root.name]  # no temporary folder left


def test_pypi_import_is_reproducible(sample: Sample, tmp_path: Path) -> None:
    first = resolve_pypi(sample)
    sample.cache = tmp_path / "other-cache"
    second = resolve_pypi(sample)
    assert git.Repo(first.root).head.commit.hexsha == git.Repo(second.root).head.commit.hexsha


def test_second_resolve_reuses_the_imported_tree(sample: Sample, tmp_path: Path) -> None:
    first = resolve_pypi(sample)
    head = git.Repo(first.root).head.commit.hexsha
    logs: list[str] = []
    # the sdist is not read again: a path that does not exist is fine
    second = resolve_pypi(sample, sdist=tmp_path / "gone.tar.gz", log=logs)
    assert second == first
    assert logs == []
    assert git.Repo(second.root).head.commit.hexsha == head


def test_sha_prefix_resolves_to_the_release(sample: Sample) -> None:
    tree = resolve_pypi(sample, sha=sample.upstream.commit[:7].upper())
    assert tree.commit == sample.upstream.commit
    assert tree.origin == "pypi-sdist"


def test_sdist_sha256_mismatch(sample: Sample, tmp_path: Path) -> None:
    bad = tampered_sdist(sample, tmp_path)
    message = upstream_error(lambda: resolve_pypi(sample, sdist=bad))
    assert message.startswith("digest mismatch:")
    assert sha256_of(bad) in message
    assert sample.upstream.sdist_sha256 in message
    assert f"{PACKAGE}=={VERSION}" in message
    assert not (sample.cache / "pypi").exists()  # nothing imported


def test_source_digest_mismatch(sample: Sample, tmp_path: Path) -> None:
    """The sdist matches its pinned sha256, but a pinned source file differs from the tag."""
    bad = tampered_sdist(sample, tmp_path)
    sample.write_pin(sdist_sha256=sha256_of(bad))
    message = upstream_error(lambda: resolve_pypi(sample, sdist=bad))
    tree_dir = sample.cache / "pypi" / f"{PACKAGE}-{VERSION}"
    assert message.startswith(f"digest mismatch: {PACKAGE} {VERSION} imported at {tree_dir} has sha256:")
    assert f"but {TAG} ({sample.upstream.commit[:12]}) has {sample.upstream.digest}" in message
    assert f"delete {tree_dir}" in message


def test_pinned_digest_mismatch(sample: Sample) -> None:
    """A pin whose source digest is not the one of the files (a tampered pin) is refused too."""
    wrong = "sha256:" + "0" * 64
    sample.write_pin(source_digest=wrong)
    message = upstream_error(lambda: resolve_pypi(sample))
    assert "digest mismatch" in message and wrong in message and sample.upstream.digest in message


def test_unknown_sha_without_repo(sample: Sample) -> None:
    message = upstream_error(lambda: resolve_pypi(sample, sha="deadbeef"))
    assert message.startswith("unknown upstream sha 'deadbeef'")
    assert f"known: {sample.upstream.commit[:12]} ({TAG})" in message
    assert "--upstream-repo" in message
    assert not sample.cache.exists()


def test_not_a_sha(sample: Sample) -> None:
    message = upstream_error(lambda: resolve_pypi(sample, sha="main"))
    assert "--upstream 'main' is not a git sha" in message


def test_dirty_imported_tree_is_refused(sample: Sample) -> None:
    tree = resolve_pypi(sample)
    (tree.root / BLOCK).write_text("x = 1\n")
    message = upstream_error(lambda: resolve_pypi(sample))
    assert message == f"{tree.root}: the imported upstream has local modifications; delete it and rebuild"


def test_untracked_file_in_imported_tree_is_refused(sample: Sample) -> None:
    tree = resolve_pypi(sample)
    (tree.root / "megatron" / "core" / "extra.py").write_text("x = 1\n")
    assert "local modifications" in upstream_error(lambda: resolve_pypi(sample))


def test_malformed_pin(sample: Sample) -> None:
    sample.pin.write_text("repository: x\npackage: y\n")
    with pytest.raises(UpstreamError, match="malformed pin file"):
        load_pin(sample.pin)


# -- git ----------------------------------------------------------------------------------------


def test_git_full_sha(sample: Sample) -> None:
    tree = resolve_git(sample, sample.upstream.commit)
    assert tree.origin == "git"
    assert tree.commit == sample.upstream.commit
    assert tree.repository == str(sample.upstream.repo)
    assert (tree.version, tree.tag) == (VERSION, TAG)  # from the pin: the commit is a release
    assert tree.digest == sample.upstream.digest  # the same bytes as the sdist
    assert tree.root == sample.cache / "trees" / sample.upstream.commit
    assert git.Repo(tree.root).head.commit.hexsha == sample.upstream.commit
    assert (tree.root / "megatron" / "training" / "train.py").is_file()  # a full checkout
    assert "megatron/training/train.py" not in tree.files  # but only pinned files count


def test_git_unique_prefix_of_an_unpinned_commit(sample: Sample) -> None:
    up = sample.upstream
    tree = resolve_git(sample, up.next_commit[:10])
    assert tree.commit == up.next_commit
    assert (tree.version, tree.tag) == ("0.1.1", None)  # read from package_info.py
    assert tree.digest == up.next_digest
    assert "def unused" in (tree.read(BLOCK) or "")


def test_git_second_resolve_reuses_clone_and_worktree(sample: Sample) -> None:
    first = resolve_git(sample, sample.upstream.commit)
    logs: list[str] = []
    second = resolve_git(sample, sample.upstream.commit[:8], logs)
    assert second == first
    assert logs == []


def test_git_unknown_sha(sample: Sample) -> None:
    message = upstream_error(lambda: resolve_git(sample, "deadbeef"))
    assert message == f"unknown upstream sha 'deadbeef': no such commit in {sample.upstream.repo}"


def test_git_digest_mismatch_for_a_pinned_commit(sample: Sample) -> None:
    wrong = "sha256:" + "1" * 64
    sample.write_pin(source_digest=wrong)
    message = upstream_error(lambda: resolve_git(sample, sample.upstream.commit))
    assert message.startswith(f"digest mismatch for {sample.upstream.commit[:12]} ({TAG}): pin says {wrong}")
    assert sample.upstream.digest in message


def test_git_dirty_checkout_is_refused(sample: Sample) -> None:
    tree = resolve_git(sample, sample.upstream.commit)
    (tree.root / BLOCK).write_text("x = 1\n")
    message = upstream_error(lambda: resolve_git(sample, sample.upstream.commit))
    assert message == f"{tree.root}: the upstream checkout has local modifications; delete it and rebuild"


def test_git_unreachable_repository(sample: Sample, tmp_path: Path) -> None:
    """git's message on one line (GitPython's wrapped stderr used to leak a newline), no temporary clone left."""
    message = upstream_error(lambda: resolve(sample.upstream.commit, load_pin(sample.pin), sample.cache,
                                             str(tmp_path / "no-such-repo")))
    missing = tmp_path / "no-such-repo"
    assert message == f"git failed for {missing}: fatal: repository '{missing}' does not exist"
    assert list((sample.cache / "git").iterdir()) == []  # no half-made clone left in the cache


# -- through the CLI ----------------------------------------------------------------------------


def test_cli_unknown_sha_exits_3(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sample.args("build", "--upstream", "abcdef12", "--out", str(sample.out))) == 3
    one_error_line(capsys.readouterr().err, "unknown upstream sha 'abcdef12'", "--upstream-repo")
    assert_untouched(sample.out)


def test_cli_sdist_mismatch_exits_3(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tampered_sdist(sample, tmp_path)
    args = sample.args("build", "--out", str(sample.out), upstream=False) + ["--sdist", str(bad)]
    assert main(args) == 3
    one_error_line(capsys.readouterr().err, "digest mismatch", sha256_of(bad), sample.upstream.sdist_sha256)
    assert_untouched(sample.out)


def test_cli_dirty_checkout_exits_3(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    args = sample.args("check", upstream=False) + ["--upstream-repo", str(sample.upstream.repo)]
    assert main(args) == 0
    capsys.readouterr()
    tree = sample.cache / "trees" / sample.upstream.commit
    (tree / BLOCK).write_text((tree / BLOCK).read_text() + "# local edit\n")
    assert main(args) == 3
    one_error_line(capsys.readouterr().err, str(tree), "local modifications")


def test_cli_unreachable_repository_exits_3(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-repo"
    args = sample.args("build", "--out", str(sample.out), upstream=False) + ["--upstream-repo", str(missing)]
    assert main(args) == 3
    one_error_line(capsys.readouterr().err, f"git failed for {missing}: fatal: repository '{missing}' does not exist")
    assert_untouched(sample.out)


def test_cli_sha_prefix_uses_the_pinned_release(sample: Sample, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sample.args("check", "--upstream", sample.upstream.commit[:6])) == 0
    assert capsys.readouterr().out.split() == ["v0.1.0", "double_output", "applied"]
    assert (sample.cache / "pypi" / f"{PACKAGE}-{VERSION}").is_dir()


def test_sdist_without_single_top_folder(sample: Sample, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("a/x.txt", "b/y.txt"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    bad = tmp_path / "two-tops.tar.gz"
    bad.write_bytes(buf.getvalue())
    sample.write_pin(sdist_sha256=sha256_of(bad))
    message = upstream_error(lambda: resolve_pypi(sample, sdist=bad))
    assert "expected one top-level folder" in message
    assert [p for p in (sample.cache / "pypi").iterdir()] == []  # no half-imported tree
