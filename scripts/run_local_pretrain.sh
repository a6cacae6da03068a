#!/usr/bin/env bash
# Pretrain on this node: one torchrun that starts a process per GPU.
#
#   EXP=path/to/exp.yaml bash scripts/run_local_pretrain.sh [--key value ...]
#
# Arguments after the script name are passed to `primus_runtime train` (config overrides).
# Environment (defaults in brackets):
#   EXP            experiment YAML (required)
#   BACKEND        [megatron]; the only backend primus_runtime has
#   NNODES [1]  NODE_RANK [0]  GPUS_PER_NODE [visible GPUs, else 1]
#   MASTER_ADDR [localhost]  MASTER_PORT [1234]
#   DATA_PATH, HF_TOKEN, PRIMUS_TEAM, PRIMUS_USER, PRIMUS_EXP_NAME: passed through to the run
#                  (the YAML reads them as ${VAR:default})
#   DRY_RUN=1      print the torchrun command instead of running it
# Console output is tee'd to output/<exp_name>/logs/ (exp_name: PRIMUS_EXP_NAME, else the YAML's
# file name without extension).
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

count_gpus() {
    local visible="${CUDA_VISIBLE_DEVICES:-${HIP_VISIBLE_DEVICES:-}}"
    if [[ -n "$visible" ]]; then
        awk -F, '{print NF}' <<<"$visible"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --list-gpus >/dev/null 2>&1; then
        nvidia-smi --list-gpus | grep -c '^GPU'
    elif command -v rocm-smi >/dev/null 2>&1 && rocm-smi --showid --csv >/dev/null 2>&1; then
        rocm-smi --showid --csv | grep -c '^card'
    else
        echo 1
    fi
}

[[ -n "${EXP:-}" ]] || die "EXP is not set; run as: EXP=path/to/exp.yaml bash $0"
[[ -f "$EXP" ]] || die "EXP=$EXP is not a file"
BACKEND="${BACKEND:-megatron}"
[[ "$BACKEND" == megatron ]] || die "BACKEND=$BACKEND is not supported: primus_runtime trains with megatron only (unset BACKEND or set BACKEND=megatron)"

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
GPUS_PER_NODE="${GPUS_PER_NODE:-$(count_gpus)}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-1234}"
for var in NNODES NODE_RANK GPUS_PER_NODE MASTER_PORT; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || die "$var=${!var} is not a number"
done
(( NODE_RANK < NNODES )) || die "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"

# the run and the YAML's ${VAR:default} see these only when they are exported
for var in DATA_PATH HF_TOKEN PRIMUS_TEAM PRIMUS_USER PRIMUS_EXP_NAME; do
    if [[ -n "${!var+set}" ]]; then export "${var?}"; fi
done
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

cmd=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
     -m primus_runtime train --exp "$EXP" "$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi

exp_file="$(basename "$EXP")"
exp_name="${PRIMUS_EXP_NAME:-${exp_file%.*}}"
log_dir="output/$exp_name/logs"
mkdir -p "$log_dir"
log_file="$log_dir/pretrain_$(date +%Y%m%d_%H%M%S)_node${NODE_RANK}.log"
echo "node $NODE_RANK/$NNODES, $GPUS_PER_NODE GPUs, master $MASTER_ADDR:$MASTER_PORT; log: $log_file" >&2
"${cmd[@]}" 2>&1 | tee "$log_file"
