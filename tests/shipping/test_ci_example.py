"""The example CI workflow for users (docs/examples/ci/build-patched-wheel.yml) stays runnable:
valid YAML of GitHub Actions' shape, every ``python -m rewriter`` call accepted by the CLI's own
argument parser, and the artifacts it uploads are files a build writes.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from rewriter.cli import parser

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "docs" / "examples" / "ci" / "build-patched-wheel.yml"
SHELL_OPERATORS = {">>", ">", "|", "&&", "||", ";", "2>&1"}


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def steps() -> list[dict[str, Any]]:
    (job,) = workflow()["jobs"].values()
    return list(job["steps"])


def rewriter_calls(script: str) -> list[list[str]]:
    """The argument lists of every ``python… -m rewriter`` call in a ``run:`` script."""
    calls = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for i in range(len(words) - 2):
            if re.fullmatch(r"python[\d.]*", words[i]) and words[i + 1:i + 3] == ["-m", "rewriter"]:
                rest = words[i + 3:]
                end = next((n for n, w in enumerate(rest) if w in SHELL_OPERATORS), len(rest))
                calls.append(rest[:end])
    return calls


def parse(args: list[str]) -> argparse.Namespace:
    try:
        return parser().parse_args(args)
    except SystemExit as exc:  # argparse exits on an unknown command or option
        pytest.fail(f"`python -m rewriter {shlex.join(args)}` in {WORKFLOW.name} is refused by the CLI ({exc})")


def test_it_is_a_workflow_that_never_runs_in_this_repository() -> None:
    data = workflow()
    on = data.get("on", data.get(True))  # YAML 1.1 reads the key `on` as true
    assert set(on) == {"workflow_dispatch", "schedule", "pull_request"}
    assert ".github" not in WORKFLOW.parts
    for step in steps():
        assert ("uses" in step) != ("run" in step), step
        if "uses" in step:
            assert re.fullmatch(r"actions/[\w-]+@v\d+", step["uses"]), step["uses"]


def test_every_rewriter_call_is_accepted_by_the_cli() -> None:
    calls = [call for step in steps() if "run" in step for call in rewriter_calls(step["run"])]
    commands = {parse(call).command for call in calls}
    assert commands == {"build", "matrix", "interdiff"}
    (build,) = [parse(call) for call in calls if call[0] == "build"]
    assert build.upstream == "$UPSTREAM_SHA" and build.upstream_repo == "upstream/Megatron-LM"
    assert build.python == "python$v"
    assert {parse(call).format for call in calls if call[0] == "matrix"} == {"md", "json"}
    (interdiff,) = [parse(call) for call in calls if call[0] == "interdiff"]
    assert interdiff.from_ref == "origin/$BASE_REF" and interdiff.format == "md" and interdiff.html


def test_the_upstream_checkout_is_the_build_s_upstream_repo() -> None:
    checkout = next(s for s in steps() if s.get("with", {}).get("repository") == "NVIDIA/Megatron-LM")
    assert checkout["with"]["ref"] == "${{ env.UPSTREAM_SHA }}"
    assert checkout["with"]["path"] == "upstream/Megatron-LM"


def test_uploads_are_what_a_build_writes() -> None:
    """Wheels, manifest, report and diffs under each ``--out`` (names from docs/outputs.md)."""
    uploads = [s["with"]["path"].split() for s in steps() if s.get("uses", "").startswith("actions/upload-artifact")]
    paths = {p for upload in uploads for p in upload}
    out = "build/out-py3.11"  # the default interpreter's output (setup-python's last version)
    assert {"build/out-py*/*.whl", f"{out}/manifest.json", f"{out}/report.json", f"{out}/diffs/"} <= paths
    pythons = workflow()["env"]["TARGET_PYTHONS"].split()
    setup = next(s for s in steps() if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"].split() == [*[p for p in pythons if p != "3.11"], "3.11"]
