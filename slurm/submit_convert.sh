#!/usr/bin/env bash
# Usage: slurm/submit_convert.sh SA1B_INPUT SA1B_OUTPUT [NUM_TASKS=20] [hydra overrides...]
# Queues the conversion array and a finalize job that runs after every task succeeded; prints
# "<array job id> <finalize job id>". Extra sbatch flags (both jobs): SBATCH_ARGS, e.g.
# SBATCH_ARGS="--cpus-per-task=16 --mem=32G"; partition/account/time: SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_TIMELIMIT (sbatch reads them itself).
set -euo pipefail
export SA1B_INPUT="$1" SA1B_OUTPUT="$2"
tasks="${3:-20}"
shift $(( $# >= 3 ? 3 : $# ))
here="$(cd "$(dirname "$0")" && pwd)"
export FASTSAM_REPO="${FASTSAM_REPO:-$(cd "$here/.." && pwd)}"
# shellcheck disable=SC2206
extra=(${SBATCH_ARGS:-})
array=$(sbatch --parsable --export=ALL "${extra[@]}" --array="0-$(( tasks - 1 ))" \
  "$here/convert_sa1b.sbatch" "$@")
final=$(sbatch --parsable --export=ALL "${extra[@]}" --dependency="afterok:${array%%;*}" \
  "$here/finalize_sa1b.sbatch" "$@")
echo "${array%%;*} ${final%%;*}"
