#!/usr/bin/env bash
# Trains on every GPU of this machine: one process, the global batch (config.train.batch_size) split over the GPUs.
#
#   bash launch/local_multi_gpu.sh [--dry-run] CONFIG WORKDIR [--config.x=v ...]
#   bash launch/local_multi_gpu.sh configs/pneumoniamnist.py runs/pneumonia --config.train.batch_size=256
#
# --dry-run prints the command (with the environment it sets) and exits without running it. Running the same
# command again resumes from WORKDIR's newest checkpoint. PYTHON picks the interpreter (default: python).
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
split_dry_run "$@"
set -- "${args[@]}"
usage="usage: local_multi_gpu.sh [--dry-run] CONFIG WORKDIR [overrides...]"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2

# XLA takes GPU memory as it needs it rather than 75% up front, so a data-loading TensorFlow never competes.
command=(env XLA_PYTHON_CLIENT_PREALLOCATE=false "${PYTHON:-python}" -m medfusion.train
  --config="$config" --workdir="$workdir" "$@")
show "${command[@]}"
((dry_run)) && exit 0
exec "${command[@]}"
