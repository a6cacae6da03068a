"""The launch scripts turn the Primus environment variables into the right torchrun command.

They run for real, with ``DRY_RUN=1`` or with stub ``torchrun``/``nvidia-smi``/``scontrol``/
``sbatch``/``srun`` on PATH that print what they were asked to do: no GPU, no SLURM needed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL, SLURM = REPO / "scripts" / "run_local_pretrain.sh", REPO / "scripts" / "run_slurm_pretrain.sh"
SBATCH = REPO / "scripts" / "slurm" / "pretrain.sbatch"

STUBS = {
    "torchrun": 'echo "torchrun $*"',
    "nvidia-smi": 'for i in 0 1 2; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done',
    "scontrol": '[[ "$*" == "show hostnames node-[1-"* ]] || exit 1; n="${3#"node-[1-"}"; '
                'for i in $(seq 1 "${n%]}"); do echo "node-$i"; done',
    # sbatch: run the batch script here, in an allocation of --nodes fake nodes
    "sbatch": 'nodes=1; while [[ "$1" == --* ]]; do [[ "$1" == --nodes=* ]] && nodes="${1#--nodes=}"; shift; done; '
              'script="$1"; shift; SLURM_JOB_NODELIST="node-[1-$nodes]" SLURM_JOB_NUM_NODES="$nodes" '
              'SLURM_SUBMIT_DIR="$PWD" exec bash "$script" "$@"',
    # srun: run the task once per node, in order, with that node's SLURM_NODEID
    "srun": 'while [[ "$1" == --* ]]; do shift; done; '
            'for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do SLURM_NODEID="$i" "$@" || exit; done',
}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment with the stubs first on PATH, an experiment file, and nothing Primus set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\nset -euo pipefail\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "llama_tiny-pretrain.yaml").write_text("exp_name: ${PRIMUS_EXP_NAME:tiny}\n")
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    return {**keep, "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "EXP": "llama_tiny-pretrain.yaml"}


def run(script: Path, env: dict[str, str], cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], env={**env, **extra}, cwd=cwd, capture_output=True, text=True)


def torchrun_args(line: str) -> dict[str, str]:
    """``--flag value`` pairs of a torchrun command line, and everything after ``-m`` as ``rest``."""
    words = shlex.split(line)
    assert words[0] == "torchrun"
    cut = words.index("-m")
    options = dict(zip(words[1:cut:2], words[2:cut:2]))
    return {**options, "rest": " ".join(words[cut + 1:])}


def test_local_defaults(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(LOCAL, env, tmp_path, "--lr", "1e-4", "a b", DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    assert torchrun_args(proc.stdout) == {
        "--nnodes": "1", "--node_rank": "0", "--nproc_per_node": "3", "--master_addr": "localhost",
        "--master_port": "1234", "rest": "primus_runtime train --exp llama_tiny-pretrain.yaml --lr 1e-4 a b"}
    assert shlex.split(proc.stdout)[-1] == "a b"  # arguments keep their quoting
    assert not (tmp_path / "output").exists()  # a dry run writes nothing


def test_local_honours_the_environment(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(LOCAL, env, tmp_path, DRY_RUN="1", NNODES="4", NODE_RANK="3", GPUS_PER_NODE="8",
               MASTER_ADDR="10.0.0.1", MASTER_PORT="29500", BACKEND="megatron")
    args = torchrun_args(proc.stdout)
    assert (args["--nnodes"], args["--node_rank"], args["--nproc_per_node"]) == ("4", "3", "8")
    assert (args["--master_addr"], args["--master_port"]) == ("10.0.0.1", "29500")
    visible = run(LOCAL, env, tmp_path, DRY_RUN="1", CUDA_VISIBLE_DEVICES="0,1")
    assert torchrun_args(visible.stdout)["--nproc_per_node"] == "2"


def test_local_runs_and_logs(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(LOCAL, env, tmp_path, "--train_iters", "2", HF_TOKEN="hf_x", PRIMUS_EXP_NAME="my-run",
               NODE_RANK="0")
    assert proc.returncode == 0, proc.stderr
    [log] = (tmp_path / "output" / "my-run" / "logs").glob("pretrain_*_node0.log")
    assert log.read_text() == proc.stdout and proc.stdout.startswith("torchrun --nnodes 1 ")


ERRORS = [
    ({"EXP": ""}, "EXP is not set; run as: EXP=path/to/exp.yaml bash"),
    ({"EXP": "missing.yaml"}, "EXP=missing.yaml is not a file"),
    ({"BACKEND": "torchtitan"}, "BACKEND=torchtitan is not supported: primus_runtime trains with megatron only"),
]
RANK_ERROR = ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK=2 must be below NNODES=2")  # SLURM sets NODE_RANK itself


@pytest.mark.parametrize(("script", "extra", "message"),
                         [(LOCAL, *case) for case in (*ERRORS, RANK_ERROR)] + [(SLURM, *case) for case in ERRORS])
def test_clear_errors(env: dict[str, str], tmp_path: Path, script: Path, extra: dict[str, str], message: str) -> None:
    proc = run(script, env, tmp_path, DRY_RUN="1", **extra)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {message}")


def test_slurm_dry_run_prints_the_submission(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(SLURM, env, tmp_path, "--lr", "1e-4", DRY_RUN="1", NNODES="2", GPUS_PER_NODE="8",
               SBATCH_ARGS="--partition=gpu --time=01:00:00")
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == [
        "sbatch", "--nodes=2", f"--chdir={tmp_path}", f"--output={tmp_path}/output/llama_tiny-pretrain/logs/slurm-%j.out",
        "--gpus-per-node=8", "--partition=gpu", "--time=01:00:00", str(SBATCH), "--lr", "1e-4"]


@pytest.mark.skipif(shutil.which("seq") is None, reason="the scontrol stub uses seq")
def test_slurm_starts_one_torchrun_per_node(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(SLURM, env, tmp_path, "--lr", "1e-4", NNODES="3", MASTER_PORT="4321", NODE_RANK="7",
               MASTER_ADDR="ignored", DATA_PATH="/data")
    assert proc.returncode == 0, proc.stderr
    runs = [torchrun_args(line) for line in proc.stdout.splitlines()]
    assert [r["--node_rank"] for r in runs] == ["0", "1", "2"]
    for r in runs:
        assert (r["--nnodes"], r["--master_addr"], r["--master_port"], r["--nproc_per_node"]) == \
               ("3", "node-1", "4321", "3")
        assert r["rest"] == f"primus_runtime train --exp {tmp_path}/llama_tiny-pretrain.yaml --lr 1e-4"
    logs = sorted(p.name.rsplit("_", 1)[-1] for p in (tmp_path / "output" / "llama_tiny-pretrain" / "logs").iterdir())
    assert logs == ["node0.log", "node1.log", "node2.log"]


def test_sbatch_outside_an_allocation(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(SBATCH, env, tmp_path)
    assert proc.returncode != 0 and "not inside a SLURM allocation" in proc.stderr
