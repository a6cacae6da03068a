#!/usr/bin/env bash
# Pretrain on several nodes through SLURM: submits scripts/slurm/pretrain.sbatch.
#
#   NNODES=4 EXP=path/to/exp.yaml bash scripts/run_slurm_pretrain.sh [--key value ...]
#
# Arguments after the script name are passed to `primus_runtime train` (config overrides).
# Environment: EXP (required), NNODES [1], BACKEND [megatron], GPUS_PER_NODE (asked of SLURM
# when set; otherwise each node counts its GPUs), MASTER_PORT [1234], DATA_PATH, HF_TOKEN,
# PRIMUS_TEAM/PRIMUS_USER/PRIMUS_EXP_NAME; SBATCH_ARGS adds sbatch options (e.g.
# "--partition=gpu --time=04:00:00"). MASTER_ADDR and NODE_RANK come from the allocation.
# DRY_RUN=1 prints the sbatch command instead of submitting it.
# The job's own output goes to output/<exp_name>/logs/slurm-<jobid>.out, each node's console
# to a log beside it.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

[[ -n "${EXP:-}" ]] || die "EXP is not set; run as: EXP=path/to/exp.yaml bash $0"
[[ -f "$EXP" ]] || die "EXP=$EXP is not a file"
BACKEND="${BACKEND:-megatron}"
[[ "$BACKEND" == megatron ]] || die "BACKEND=$BACKEND is not supported: primus_runtime trains with megatron only (unset BACKEND or set BACKEND=megatron)"
NNODES="${NNODES:-1}"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "NNODES=$NNODES is not a positive number"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXP="$(cd "$(dirname "$EXP")" && pwd)/$(basename "$EXP")"  # the job may start in another directory
exp_file="$(basename "$EXP")"
log_dir="$PWD/output/${PRIMUS_EXP_NAME:-${exp_file%.*}}/logs"

export EXP BACKEND PRIMUS_REPO_ROOT="$REPO_ROOT"
unset NODE_RANK MASTER_ADDR  # the allocation decides these
for var in DATA_PATH HF_TOKEN PRIMUS_TEAM PRIMUS_USER PRIMUS_EXP_NAME GPUS_PER_NODE MASTER_PORT DRY_RUN; do
    if [[ -n "${!var+set}" ]]; then export "${var?}"; fi
done

read -r -a extra <<<"${SBATCH_ARGS:-}"
cmd=(sbatch --nodes="$NNODES" --chdir="$PWD" --output="$log_dir/slurm-%j.out"
     ${GPUS_PER_NODE:+--gpus-per-node="$GPUS_PER_NODE"} "${extra[@]}"
     "$REPO_ROOT/scripts/slurm/pretrain.sbatch" "$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
mkdir -p "$log_dir"
"${cmd[@]}"
