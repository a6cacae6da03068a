"""The Docker images' recipe: the Dockerfiles' steps run here, in fresh venvs, without a daemon.

The "image" is a fresh venv that sees this environment's packages (its torch stands for the
base image's); the Dockerfile's own steps then build the compiler's venv from it, the patched
wheel of the pinned upstream and the runtime wheel, and install both into it.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

from rewriter.patchset.loader import load_patchsets
from rewriter.upstream import load_pin
from tests.shipping.dockerfile import HANDLED, instructions, run_dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
KINDS = ("rocm", "cuda")


def dockerfile(kind: str) -> Path:
    return DOCKER / f"{kind}.Dockerfile"


def test_rocm_and_cuda_differ_only_in_the_base_image() -> None:
    steps = {kind: instructions(dockerfile(kind)) for kind in KINDS}
    for kind, found in steps.items():
        assert found[0].keyword == "ARG" and found[0].args.startswith("BASE_IMAGE="), kind
        assert {i.keyword for i in found} <= set(HANDLED)
        assert [i.args for i in found if i.keyword == "FROM"] == ["${BASE_IMAGE} AS wheels", "${BASE_IMAGE}"]
    assert "rocm" in steps["rocm"][0].args and "nvidia/pytorch" in steps["cuda"][0].args
    assert [(i.keyword, i.args) for i in steps["rocm"][1:]] == [(i.keyword, i.args) for i in steps["cuda"][1:]]


def test_every_run_step_calls_a_script_of_docker() -> None:
    """The steps live in scripts (which the slow test runs); a RUN line only sets their variables."""
    for kind in KINDS:
        runs = [i.args for i in instructions(dockerfile(kind)) if i.keyword == "RUN"]
        scripts = [run.split()[-1] for run in runs]
        assert scripts == ["docker/build-wheels.sh", "/opt/primus/install-wheels.sh"], runs
        assert all(run.split()[-2] == "bash" for run in runs)
    for script in ("build-wheels.sh", "install-wheels.sh"):
        assert (DOCKER / script).is_file()


def image_venv(path: Path) -> Path:
    """A fresh venv standing for the base image: this environment's packages (torch) visible."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    (own,) = path.glob("lib/python*/site-packages")
    (own / "_base_image.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return path / "bin" / "python"


@pytest.mark.slow
def test_the_dockerfile_steps_build_and_install_the_wheels(tmp_path: Path) -> None:
    python = image_venv(tmp_path / "image")
    pin = load_pin(ROOT / "vendor" / "upstream.yaml")
    stages = run_dockerfile(dockerfile("rocm"), ROOT, tmp_path / "docker",
                            {"PYTHON": str(python), "UPSTREAM_SHA": pin.pinned.commit[:12]})
    final = stages["1"]
    newest = load_patchsets(ROOT / "patchsets").names()[-1]
    wheels = sorted(p.name for p in (final / "opt" / "primus" / "build" / "wheels").iterdir())
    tag = "cp" + sys.implementation.cache_tag.removeprefix("cpython-")
    assert wheels == [f"megatron_core-{pin.pinned.version}+primus.{newest}-{tag}-{tag}-linux_x86_64.whl",
                      "primus_runtime-0.1.0-py3-none-any.whl"]
    assert (final / "opt" / "primus" / "build" / "build" / "manifest.json").is_file()
    assert (final / "workspace" / "primus" / "configs" / "examples").is_dir()
    # installed into the image's Python: the patched build, its compiled helper, the runtime
    probe = ("import json; from primus_runtime.wheel_info import installed_megatron_core as m; "
             "from megatron.core.datasets import helpers_cpp; i = m(); "
             "print(json.dumps([i.version, i.patched, helpers_cpp.__file__]))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    version, patched, helper = json.loads(out.stdout)
    assert (version, patched) == (f"{pin.pinned.version}+primus.{newest}", True)
    (own,) = (tmp_path / "image").glob("lib/python*/site-packages")
    assert Path(helper).parent.parent.parent.parent == own
    # the compiler stayed in its own venv: none of its packages went into the image
    assert not [p.name for p in own.iterdir() if p.name.lower().startswith(("libcst", "gitpython", "primus_rewriter"))]
