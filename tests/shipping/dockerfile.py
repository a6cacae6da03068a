"""Carry out a Dockerfile's steps without Docker: each stage's filesystem is a folder here.

CI machines have no Docker daemon, yet the Dockerfiles must keep working. The instructions our
Dockerfiles use (ARG, FROM, WORKDIR, COPY, RUN) are executed on folders standing for the stages'
filesystems: absolute paths in the instructions are taken inside the stage's folder, ARG values are
the RUN steps' environment (as in Docker), and the build context is the repository's files. Any
other instruction is refused, so a Dockerfile that grows one makes the test fail until this
runner knows it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HANDLED = ("ARG", "FROM", "WORKDIR", "COPY", "RUN")
_ABSOLUTE = re.compile(r"(?<=[\s=\"'])/(?=[A-Za-z])")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(path: Path) -> list[Instruction]:
    """The instructions of ``path``, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        pending, start = "", 0
    return found


def context_files(repo: Path) -> list[str]:
    """What ``docker build`` sends from the repository: its files that git does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    return sorted(name for name in out.split("\0") if name and (repo / name).is_file())


def run_dockerfile(path: Path, repo: Path, work: Path, overrides: dict[str, str]) -> dict[str, Path]:
    """Execute ``path`` with the build context ``repo``; return each stage's filesystem folder.

    ``overrides`` are ``--build-arg`` values. RUN steps run in ``/bin/sh -c`` as Docker runs them; they fail the test on error.
    """
    context = work / "context"
    for name in context_files(repo):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, context / name)
    args: dict[str, str] = {}  # of the current stage (those before the first FROM: for FROM lines only)
    stages: dict[str, Path] = {}
    fs, cwd = work, work
    for ins in instructions(path):
        where = f"{path.name}:{ins.line}"
        assert ins.keyword in HANDLED, f"{where}: {ins.keyword} is not handled by {__name__}"
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = overrides.get(name, default.strip('"'))
        elif ins.keyword == "FROM":
            words = ins.args.split()
            fs = work / f"stage{len(stages)}"
            fs.mkdir()
            cwd = fs
            stages[words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))] = fs
            args = {}
        elif ins.keyword == "WORKDIR":
            cwd = fs / ins.args.lstrip("/") if ins.args.startswith("/") else cwd / ins.args
            cwd.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            words = ins.args.split()
            source_root = context
            if words[0].startswith("--from="):
                source_root = stages[words.pop(0).removeprefix("--from=")]
            src, dest = words
            source = source_root / src.lstrip("/") if src != "." else source_root
            target = fs / dest.lstrip("/") if dest.startswith("/") else cwd / dest
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        else:  # RUN
            command = _ABSOLUTE.sub(f"{fs}/", " " + ins.args).strip()
            env = {**os.environ, **args}
            proc = subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, f"{where}: RUN failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return stages
