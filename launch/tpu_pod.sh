#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: installs medfusion on every worker and starts one process per worker.
#   bash launch/tpu_pod.sh TPU_NAME ZONE configs/pneumoniamnist.py gs://bucket/runs/pneumonia [overrides...]
set -euo pipefail
tpu=${1:?usage: tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
zone=${2:?usage: tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
config=${3:?usage: tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
workdir=${4:?usage: tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
shift 4
repo=$(git rev-parse --show-toplevel)
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/medfusion
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e; cd ~/medfusion && python3 -m pip install -q -e '.[tpu]' &&
  python3 -m medfusion.train --config='$config' --workdir='$workdir' --distributed $*"
