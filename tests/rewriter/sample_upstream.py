"""A tiny fake megatron-core upstream, generated at test time (nothing is downloaded).

It is shaped like the real one where the rewriter cares: a setuptools ``pyproject.toml`` whose
version comes from ``megatron.core.package_info.__version__``, no ``megatron/__init__.py``
(namespace package), a config dataclass with ``__post_init__`` and a function to patch. From it
the fixtures in ``conftest.py`` make an sdist-like tarball, a local git repository, a pin file
and a patchsets folder; the helpers below are shared by the test modules.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from rewriter.upstream import source_digest, source_files

PACKAGE = "fake-core"
VERSION = "0.1.0"
TAG = "core_v0.1.0"
REPOSITORY = "https://example.invalid/fake/Megatron-LM.git"

PIN_FILES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "megatron/core/**/*.py",
    "megatron/core/requirements.txt",
    "megatron/core/README.md",
    "megatron/core/datasets/helpers.cpp",
)

CONFIG_PY = '''\
"""Model options, shaped like megatron's TransformerConfig."""

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Options of the fake model."""

    hidden_size: int = 16
    """Width of the hidden layers."""

    num_layers: int = 2
    """Number of layers."""

    def __post_init__(self):
        """Check the options."""
        if self.hidden_size <= 0:
            raise ValueError("hidden_size must be positive")
'''

BLOCK_PY = '''\
"""Functions that the sample patches edit."""


def scale(config, x):
    y = x * config.hidden_size
    return y


def shift(config, x):
    x = x + 1
    x = x + 1
    return x
'''

PACKAGE_INFO_PY = '''\
MAJOR = 0
MINOR = 1
PATCH = {patch}
PRE_RELEASE = ""

# Use the following formatting: (major, minor, patch, pre-release)
VERSION = (MAJOR, MINOR, PATCH, PRE_RELEASE)

__shortversion__ = '.'.join(map(str, VERSION[:3]))
__version__ = '.'.join(map(str, VERSION[:3])) + ''.join(VERSION[3:])

__package_name__ = 'megatron_core'
'''

PYPROJECT_TOML = '''\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[tool.setuptools]
include-package-data = true

[tool.setuptools.packages.find]
include = ["megatron.core*"]

[tool.setuptools.dynamic]
version = { attr = "megatron.core.package_info.__version__" }

[project]
name = "megatron-core"
dynamic = ["version"]
description = "A fake megatron-core for the rewriter's tests"
requires-python = ">=3.10"
'''

SOURCE_TREE = {
    "pyproject.toml": PYPROJECT_TOML,
    "setup.py": "from setuptools import setup\n\nsetup()\n",
    "MANIFEST.in": "include megatron/core/requirements.txt\ninclude megatron/core/README.md\n",
    "README.md": "# fake megatron-core\n",
    "megatron/core/__init__.py": '"""Fake megatron-core."""\n',
    "megatron/core/package_info.py": PACKAGE_INFO_PY.format(patch=0),
    "megatron/core/requirements.txt": "packaging\n",
    "megatron/core/README.md": "# megatron.core\n",
    "megatron/core/datasets/__init__.py": "",
    "megatron/core/datasets/helpers.cpp": "// the real helper is compiled by upstream's setup.py; this one is not\n",
    "megatron/core/transformer/__init__.py": "",
    "megatron/core/transformer/config.py": CONFIG_PY,
    "megatron/core/transformer/block.py": BLOCK_PY,
}
# a helper compiled the way upstream's setup.py compiles megatron's (pybind11 includes asked of
# `python3 -m pybind11`): for the tests of the helper cache and of reproducible compiled bytes
HELPER_CPP = """\
#include <pybind11/pybind11.h>

static long long triangle(long long n) {
    long long sum = 0;
    for (long long i = 1; i <= n; ++i) sum += i;
    return sum;
}

PYBIND11_MODULE(helpers_cpp, m) { m.def("triangle", &triangle); }
"""
HELPER_SETUP_PY = """\
import subprocess

from setuptools import Extension, setup

includes = subprocess.check_output(["python3", "-m", "pybind11", "--includes"]).decode().split()
helper = Extension("megatron.core.datasets.helpers_cpp", sources=["megatron/core/datasets/helpers.cpp"],
                   language="c++", extra_compile_args=includes + ["-O2", "-std=c++17"])
setup(ext_modules=[helper])
"""
WITH_HELPER = {"setup.py": HELPER_SETUP_PY, "megatron/core/datasets/helpers.cpp": HELPER_CPP}
# in the git repository only (as megatron/training is in Megatron-LM but not in the sdist)
GIT_ONLY = {"megatron/training/train.py": "def main():\n    pass\n", ".gitignore": "build/\n"}
# in the sdist only
SDIST_ONLY = {"PKG-INFO": f"Metadata-Version: 2.1\nName: megatron-core\nVersion: {VERSION}\n"}

SERIES_YAML = """\
version: v0.1.0
summary: The sample patchset.
patches:
  - double_output
"""

PATCH_YAML = """\
id: double_output
summary: Multiply what scale() returns when the flag is on.
implemented_in: core
upstream:
  status: absent
  note: upstream has nothing like it.
flags:
  - name: double_output
    type: bool
    default: false
    version: v0.1.0
    table: model
    description: Multiply the output of scale() by a factor.
edits:
  - op: add_config_field
    file: megatron/core/transformer/config.py
    target: ModelConfig
    flag: double_output

  - op: insert_statements
    file: megatron/core/transformer/block.py
    target: scale
    where: before_return
    guard: config.double_output
    template: double.py.j2
    vars: {factor: 2}
"""

TEMPLATE = "y = y * {{ vars.factor }}\n"
PATCHED_LINE = "+        y = y * 2\n"  # the line the patch adds to scale(), as a diff line

PATCHSETS = {
    "v0.1.0/series.yaml": SERIES_YAML,
    "v0.1.0/double_output/patch.yaml": PATCH_YAML,
    "v0.1.0/double_output/double.py.j2": TEMPLATE,
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def make_sdist(src: Path, dest: Path, top: str = f"fake_core-{VERSION}") -> Path:
    """An sdist-like ``.tar.gz`` of ``src`` with one top-level folder and fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=f"{top}/{path.relative_to(src).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 1_600_000_000, 0, 0, "", ""
            if path.is_file():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    dest.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return dest


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2001-01-01T00:00:00+00:00",
           "GIT_COMMITTER_DATE": "2001-01-01T00:00:00+00:00", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def clone_of(sample: Sample, tmp_path: Path) -> Path:
    """A clone of the sample upstream repository that a test may change (the sample is shared)."""
    repo = tmp_path / "upstream-clone"
    subprocess.run(["git", "clone", "-q", str(sample.upstream.repo), str(repo)], check=True)
    git(repo, "config", "user.name", "t")
    git(repo, "config", "user.email", "t@example.invalid")
    return repo


@dataclass(frozen=True)
class SampleUpstream:
    """The generated upstream, shared by every test (read only)."""

    src: Path  # the source tree (the sdist's content, without PKG-INFO)
    sdist: Path
    sdist_sha256: str
    digest: str  # source digest over PIN_FILES
    repo: Path  # a git repository: `commit` (the release, tagged) then `next_commit`
    commit: str
    next_commit: str
    next_digest: str


def make_upstream(base: Path, overrides: dict[str, str] | None = None) -> SampleUpstream:
    """The sample upstream; ``overrides`` replaces or adds source files (e.g. a compiled helper)."""
    tree = {**SOURCE_TREE, **(overrides or {})}
    src = write_tree(base / "src", tree)
    sdist_src = write_tree(base / "sdist-src", {**tree, **SDIST_ONLY})
    sdist = make_sdist(sdist_src, base / f"fake_core-{VERSION}.tar.gz")
    digest = source_digest(src, source_files(src, PIN_FILES))

    repo = write_tree(base / "repo", {**tree, **GIT_ONLY})
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Sample Upstream")
    git(repo, "config", "user.email", "sample@example.invalid")
    git(repo, "add", "--all")
    git(repo, "commit", "-q", "-m", "release 0.1.0")
    git(repo, "tag", TAG)
    commit = git(repo, "rev-parse", "HEAD")
    write_tree(repo, {
        "megatron/core/package_info.py": PACKAGE_INFO_PY.format(patch=1),
        "megatron/core/transformer/block.py": BLOCK_PY + "\n\ndef unused():\n    return None\n",
    })
    git(repo, "commit", "-q", "-am", "after the release")
    next_commit = git(repo, "rev-parse", "HEAD")
    next_digest = source_digest(repo, source_files(repo, PIN_FILES))
    return SampleUpstream(src, sdist, sha256_of(sdist), digest, repo, commit, next_commit, next_digest)


def pin_text(upstream: SampleUpstream, **release_overrides: str) -> str:
    release = {
        "version": VERSION,
        "tag": TAG,
        "commit": upstream.commit,
        "sdist_sha256": upstream.sdist_sha256,
        "source_digest": upstream.digest,
        **release_overrides,
    }
    data = {"repository": REPOSITORY, "package": PACKAGE, "pinned": VERSION, "files": list(PIN_FILES),
            "releases": [release]}
    return "# the sample pin (same schema as vendor/upstream.yaml)\n" + yaml.safe_dump(data, sort_keys=False)


@dataclass
class Sample:
    """One test's project: pin, patchsets, caches and an output folder, all under tmp_path."""

    upstream: SampleUpstream
    root: Path  # --root (docs/ lives here)
    pin: Path
    patchsets: Path
    cache: Path  # --upstream-cache
    build_cache: Path
    out: Path

    def write_pin(self, **release_overrides: str) -> None:
        self.pin.write_text(pin_text(self.upstream, **release_overrides), encoding="utf-8")

    def write_patchsets(self, files: dict[str, str] | None = None, *, replace: bool = False) -> Path:
        """Write (or with ``replace``, replace the folder by) the given patchset files."""
        if replace and self.patchsets.exists():
            shutil.rmtree(self.patchsets)
        return write_tree(self.patchsets, files if files is not None else PATCHSETS)

    @property
    def patch_yaml(self) -> Path:
        return self.patchsets / "v0.1.0" / "double_output" / "patch.yaml"

    def edit_patch(self, old: str, new: str) -> str:
        """Replace ``old`` (which must occur once) in the sample patch.yaml; return the new text."""
        text = self.patch_yaml.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in the sample patch"
        text = text.replace(old, new)
        self.patch_yaml.write_text(text, encoding="utf-8")
        return text

    def args(self, command: str, *extra: str, upstream: bool = True, cache: bool = True) -> list[str]:
        args = [command, "-q", "--root", str(self.root), "--patchsets", str(self.patchsets), "--pin", str(self.pin),
                "--upstream-cache", str(self.cache)]
        args += ["--build-cache", str(self.build_cache)] if cache else ["--no-cache"]
        if upstream:
            args += ["--sdist", str(self.upstream.sdist)]
        return args + list(extra)


def commit_project(sample: Sample) -> None:
    """Make the sample project a git repository with everything committed (for ``interdiff --from-ref``)."""
    git(sample.root, "init", "-q", "-b", "main")
    git(sample.root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "add", "--all")
    git(sample.root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "the project")


def change_factor(sample: Sample, factor: int, commit: bool) -> None:
    """Change the sample patch's template variable (the generated line becomes ``y = y * factor``)."""
    sample.edit_patch("vars: {factor: 2}", f"vars: {{factor: {factor}}}")
    if commit:
        git(sample.root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qam", "factor")


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` that contains ``needle``."""
    for n, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in text")


def one_error_line(stderr: str, *needles: str) -> str:
    """``stderr`` is exactly one line starting with ``error:`` and containing every needle."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes; None if the folder does not exist."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Temporary folders a build may leave beside its output folder (there must be none)."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name.startswith((f".{out.name}-partial-", f".{out.name}-old-")))


def assert_untouched(out: Path, before: dict[str, bytes] | None = None) -> None:
    """``out`` is as it was (absent when ``before`` is None), with no partial output beside it."""
    assert snapshot(out) == before
    assert leftovers(out) == []
