#!/usr/bin/env bash
# Trains on every GPU of this machine (one process; the global batch is split over the GPUs).
#   bash launch/local_multi_gpu.sh configs/pneumoniamnist.py runs/pneumonia [--config.train.batch_size=256 ...]
set -euo pipefail
config=${1:?usage: local_multi_gpu.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: local_multi_gpu.sh CONFIG WORKDIR [overrides...]}
shift 2
# Let XLA take GPU memory as it needs it rather than 75% up front, so a data-loading TF never competes.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec python -m medfusion.train --config="$config" --workdir="$workdir" "$@"
