"""``--upstream-repo PATH`` as users type it: relative paths from any folder, a dirty source,
interrupted checkouts, and nothing of the checkout ever placed inside the cached clone.

The cache here is the default one, ``vendor/.cache`` under ``--root``, which is relative when the
command runs from the repository root as the README shows (the case that used to put the checkout
inside the clone, then fail with "already exists").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import git as gitpython
import pytest
from sample_upstream import Sample, clone_of, git, one_error_line, write_tree

from rewriter.cli import main
from rewriter.gitcheckout import repository_location

BLOCK = "megatron/core/transformer/block.py"
ROOT = Path(__file__).resolve().parents[2]


def project_args(command: str, *extra: str) -> list[str]:
    """The sample project's files by relative names, from its root: ``--root`` is the default ``.``."""
    return [command, "-q", "--pin", "upstream.yaml", "--patchsets", "patchsets", "--no-cache", *extra]


def cache_of(sample: Sample) -> Path:
    return sample.root / "vendor" / ".cache"


def assert_clone_holds_no_checkout(sample: Sample) -> None:
    """The cached bare clone has no worktree registered and no files of a checkout inside it."""
    (clone,) = (cache_of(sample) / "git").iterdir()
    assert (clone / "HEAD").is_file()
    assert not (clone / "vendor").exists() and not (clone / "megatron").exists()
    listed = gitpython.Repo(clone).git.worktree("list", "--porcelain")
    assert listed.count("worktree ") == 1, listed  # the bare clone itself, nothing else


def test_from_the_repository_root_with_a_relative_repo(sample: Sample, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(sample.root)
    relative = os.path.relpath(sample.upstream.repo, sample.root)
    args = project_args("check", "--upstream", sample.upstream.commit[:10], "--upstream-repo", relative)
    assert main(args) == 0
    assert capsys.readouterr().out.split() == ["v0.1.0", "double_output", "applied"]
    tree = cache_of(sample) / "trees" / sample.upstream.commit
    assert gitpython.Repo(tree).head.commit.hexsha == sample.upstream.commit
    assert_clone_holds_no_checkout(sample)
    # the second run reuses what the first one made (it used to fail with "already exists")
    assert main(args) == 0
    assert capsys.readouterr().err == ""


def test_from_a_subdirectory_the_same_cache_is_reused(sample: Sample, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(sample.root)
    assert main(project_args("check", "--upstream", sample.upstream.commit,
                             "--upstream-repo", os.path.relpath(sample.upstream.repo))) == 0
    sub = sample.root / "docs" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    args = ["check", "--root", "../..", "--pin", "../../upstream.yaml", "--patchsets", "../../patchsets", "--no-cache",
            "--upstream", sample.upstream.commit, "--upstream-repo", os.path.relpath(sample.upstream.repo)]
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "cloning" not in err and "checking out" not in err  # the same absolute clone and tree
    assert len(list((cache_of(sample) / "git").iterdir())) == 1
    assert not (sub / "vendor").exists()
    assert_clone_holds_no_checkout(sample)


@pytest.mark.slow
def test_build_as_the_readme_shows_then_from_a_subdirectory(sample: Sample, tmp_path: Path) -> None:
    """``python -m rewriter build`` in a child process, from the root, then from a subdirectory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PRIMUS_REWRITER_CACHE", None)
    relative = os.path.relpath(sample.upstream.repo, sample.root)
    cmd = [sys.executable, "-m", "rewriter", *project_args("build", "--upstream", sample.upstream.commit,
                                                           "--upstream-repo", relative, "--out", "build/out")]
    first = subprocess.run(cmd, cwd=sample.root, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    wheels = sorted((sample.root / "build" / "out").glob("*.whl"))
    assert [w.name.split("-")[1] for w in wheels] == ["0.1.0+primus.v0.1.0"]
    sub = sample.root / "patchsets" / "v0.1.0"
    cmd = [sys.executable, "-m", "rewriter", "build", "-q", "--root", "../..", "--pin", "../../upstream.yaml",
           "--patchsets", "..", "--no-cache", "--upstream", sample.upstream.commit[:12],
           "--upstream-repo", os.path.relpath(sample.upstream.repo, sub), "--out", str(tmp_path / "out2")]
    second = subprocess.run(cmd, cwd=sub, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "out2" / wheels[0].name).read_bytes() == wheels[0].read_bytes()
    assert_clone_holds_no_checkout(sample)


def test_repository_location() -> None:
    for remote in ("https://github.com/NVIDIA/Megatron-LM.git", "git@github.com:NVIDIA/Megatron-LM.git",
                   "file:///srv/Megatron-LM", "ssh://git@example.com/x.git"):
        assert repository_location(remote) == remote
    assert repository_location("../Megatron-LM") == str(Path.cwd().parent / "Megatron-LM")


# -- interrupted checkouts ------------------------------------------------------------------------


def test_interrupted_checkout_leaves_nothing_and_the_next_run_succeeds(
        sample: Sample, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(sample.root)
    args = project_args("check", "--upstream", sample.upstream.commit, "--upstream-repo", str(sample.upstream.repo))
    real = gitpython.cmd.Git._call_process

    def interrupted(self: gitpython.cmd.Git, method: str, *a: object, **kw: object) -> object:
        if method == "checkout":
            raise KeyboardInterrupt
        return real(self, method, *a, **kw)

    monkeypatch.setattr(gitpython.cmd.Git, "_call_process", interrupted)
    assert main(args) == 130
    trees = cache_of(sample) / "trees"
    assert [p.name for p in trees.iterdir()] == []  # no tree, no temporary checkout
    monkeypatch.setattr(gitpython.cmd.Git, "_call_process", real)
    capsys.readouterr()
    assert main(args) == 0
    assert [p.name for p in trees.iterdir()] == [sample.upstream.commit]


def test_checkout_killed_with_sigkill_is_cleaned_up(sample: Sample, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed run cannot clean up: its ``.checkout-<pid>-…`` is removed by the next run."""
    monkeypatch.chdir(sample.root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    leftover = cache_of(sample) / "trees" / f".checkout-{dead}-abc" / "tree"
    write_tree(leftover, {BLOCK: "half\n"})
    assert main(project_args("check", "--upstream", sample.upstream.commit,
                             "--upstream-repo", str(sample.upstream.repo))) == 0
    assert [p.name for p in (cache_of(sample) / "trees").iterdir()] == [sample.upstream.commit]


@pytest.mark.parametrize("damage", ["files missing", "broken .git", "other commit"])
def test_damaged_or_incomplete_checkout_is_checked_out_again(sample: Sample, damage: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(sample.root)
    args = project_args("check", "--upstream", sample.upstream.commit, "--upstream-repo", str(sample.upstream.repo))
    assert main(args) == 0
    tree = cache_of(sample) / "trees" / sample.upstream.commit
    if damage == "files missing":  # what an interrupted `git worktree add` of older versions left
        shutil.rmtree(tree / "megatron" / "core" / "transformer")
    elif damage == "broken .git":
        shutil.rmtree(tree / ".git")
        (tree / ".git").write_text("gitdir: /nowhere\n")
    else:
        git(tree, "checkout", "-q", "--detach", sample.upstream.next_commit)
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: the upstream checkout {tree} is ") and err.count("\n") == 1, err
    assert "checking it out again" in err
    repo = gitpython.Repo(tree)
    assert repo.head.commit.hexsha == sample.upstream.commit and not repo.is_dirty(untracked_files=True)


# -- a dirty source repository --------------------------------------------------------------------


def test_dirty_source_is_refused_unless_allowed(sample: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    source = clone_of(sample, tmp_path)
    (source / BLOCK).write_text((source / BLOCK).read_text() + "LOCAL_EDIT = 1\n")
    (source / "notes.txt").write_text("untracked\n")
    monkeypatch.chdir(sample.root)
    relative = os.path.relpath(source)
    args = project_args("check", "--upstream", sample.upstream.commit, "--upstream-repo", relative)
    assert main(args) == 3
    line = one_error_line(capsys.readouterr().err, f"--upstream-repo {source} has uncommitted changes",
                          f"M {BLOCK}", "?? notes.txt", "--allow-dirty")
    assert "the build takes a commit, not the working tree" in line
    assert not (cache_of(sample) / "git").exists()  # refused before cloning anything

    assert main([*args, "--allow-dirty"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: --upstream-repo {source} has uncommitted changes") and err.count("\n") == 1
    tree = cache_of(sample) / "trees" / sample.upstream.commit
    assert "LOCAL_EDIT" not in (tree / BLOCK).read_text()  # the commit was built, not the edit


def test_ignored_files_do_not_make_the_source_dirty(sample: Sample, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    source = clone_of(sample, tmp_path)
    write_tree(source, {"build/lib/x.so": "compiled\n"})  # build/ is in the sample's .gitignore
    monkeypatch.chdir(sample.root)
    assert main(project_args("check", "--upstream", sample.upstream.commit, "--upstream-repo", str(source))) == 0


def test_allow_dirty_needs_upstream_repo(sample: Sample, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(sample.root)
    assert main(project_args("check", "--allow-dirty")) == 2
    one_error_line(capsys.readouterr().err, "--allow-dirty", "--upstream-repo")

