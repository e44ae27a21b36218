#!/usr/bin/env bash
# Usage: slurm/submit_convert.sh SA1B_INPUT SA1B_OUTPUT [NUM_TASKS=20] [hydra overrides...]
# Queues the conversion array and a finalize job that runs after every task succeeded.
set -euo pipefail
export SA1B_INPUT="$1" SA1B_OUTPUT="$2"
tasks="${3:-20}"
shift $(( $# >= 3 ? 3 : $# ))
here="$(cd "$(dirname "$0")" && pwd)"
array=$(sbatch --parsable --export=ALL --array="0-$(( tasks - 1 ))" "$here/convert_sa1b.sbatch" "$@")
final=$(sbatch --parsable --export=ALL --dependency="afterok:${array%%;*}" \
  "$here/finalize_sa1b.sbatch" "$@")
echo "conversion array ${array%%;*} (${tasks} tasks), finalize ${final%%;*}"
