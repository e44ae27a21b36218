#!/usr/bin/env bash
# Usage: slurm/submit_convert.sh INPUT OUTPUT [NUM_TASKS=20] [hydra overrides...]
#   slurm/submit_convert.sh /data/sa1b /data/sa1b_2pct 20                 # SA-1B tars
#   slurm/submit_convert.sh - /data/coco_shards 8 input=coco input.annotation=... \
#       input.image_root=...                                               # input in overrides
# Queues the conversion array and a finalize job that runs after every task succeeded; prints
# "<array job id> <finalize job id>". Extra sbatch flags (both jobs): SBATCH_ARGS, e.g.
# SBATCH_ARGS="--cpus-per-task=16 --mem=32G"; partition/account/time: SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_TIMELIMIT (sbatch reads them itself).
set -euo pipefail
if [[ "$1" != "-" ]]; then export SA1B_INPUT="$1"; else unset SA1B_INPUT; fi
export CONVERT_OUTPUT="$2"
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
