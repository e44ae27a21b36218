#!/usr/bin/env bash
# Queue slurm/train.sbatch with resources from the environment; prints the job id.
#   NODES=4 slurm/submit_train.sh +experiment=fastsam_x
#   GPUS_PER_NODE=0 TASKS_PER_NODE=2 slurm/submit_train.sh trainer=ddp_sim   # CPU DDP (gloo)
# NODES (1), GPUS_PER_NODE (8; 0 = CPU), TASKS_PER_NODE (= GPUS_PER_NODE, or 1 on CPU),
# CPUS_PER_TASK (8), MEM (unset: the partition's default), TIME, PARTITION, ACCOUNT (unset:
# the cluster's defaults, or SBATCH_TIMELIMIT / SBATCH_PARTITION / SBATCH_ACCOUNT), SBATCH_ARGS
# (any other sbatch flags). Everything after the script name goes to train.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
gpus=${GPUS_PER_NODE:-8}
tasks=${TASKS_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}
args=(--parsable --nodes="${NODES:-1}" --ntasks-per-node="$tasks"
      --cpus-per-task="${CPUS_PER_TASK:-8}")
(( gpus > 0 )) && args+=(--gpus-per-node="$gpus")
[[ -n "${MEM:-}" ]] && args+=(--mem="$MEM")
[[ -n "${TIME:-}" ]] && args+=(--time="$TIME")
[[ -n "${PARTITION:-}" ]] && args+=(--partition="$PARTITION")
[[ -n "${ACCOUNT:-}" ]] && args+=(--account="$ACCOUNT")
# shellcheck disable=SC2206
[[ -n "${SBATCH_ARGS:-}" ]] && args+=($SBATCH_ARGS)
export FASTSAM_REPO="${FASTSAM_REPO:-$(cd "$here/.." && pwd)}"
job=$(sbatch "${args[@]}" --export=ALL "$here/train.sbatch" "$@")
echo "${job%%;*}"
