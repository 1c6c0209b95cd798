#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: creates the slice unless it exists, copies this working tree to every worker and
# installs it there, then starts the same train command on all workers (one process each; --distributed: JAX finds
# the other workers through the TPU metadata).
#
#   bash launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [--config.x=v ...]
#   ACCELERATOR=v4-32 bash launch/tpu_pod.sh my-tpu us-central2-b configs/pneumoniamnist.py /mnt/shared/runs/pneumonia
#
# CONFIG is relative to the repository root. WORKDIR is an absolute path on storage that every worker mounts at the
# same place (a Filestore share, or a bucket through gcsfuse); not a gs:// URL, which medfusion cannot write to.
# ACCELERATOR (default v4-32) and RUNTIME (the TPU VM image, default tpu-ubuntu2204-base) are used only to create
# the slice. --dry-run prints every command (gcloud included) and exits without running any. A preempted slice:
# delete it, then run the same command again; training resumes from WORKDIR's newest checkpoint.
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
split_dry_run "$@"
set -- "${args[@]}"
usage="usage: tpu_pod.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [overrides...]"
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:?$usage}
workdir=${4:?$usage}
shift 4
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ ! -f $repo/${config%%:*} ]]; then
  echo "tpu_pod.sh: no config file ${config%%:*} in $repo (CONFIG is relative to the repository root)" >&2
  exit 2
fi
if [[ $workdir != /* ]]; then
  echo "tpu_pod.sh: WORKDIR must be an absolute path on storage every worker mounts (gs:// URLs are not supported)" >&2
  exit 2
fi

run() {  # prints a command, and runs it unless --dry-run
  show "$@"
  ((dry_run)) || "$@"
}

tpus=(gcloud compute tpus tpu-vm)
describe=("${tpus[@]}" describe "$tpu" --zone="$zone" --format="value(state)")
create=("${tpus[@]}" create "$tpu" --zone="$zone" --accelerator-type="${ACCELERATOR:-v4-32}"
  --version="${RUNTIME:-tpu-ubuntu2204-base}")
if ((dry_run)); then
  show "${describe[@]}"
  echo "# only if there is no such slice yet:"
  show "${create[@]}"
else
  state=$("${describe[@]}" 2>/dev/null) || state=""
  if [[ -z $state ]]; then
    show "${create[@]}"
    "${create[@]}"
  elif [[ $state != READY ]]; then
    echo "tpu_pod.sh: TPU $tpu is $state; delete it (${tpus[*]} delete $tpu --zone=$zone) and run this again" >&2
    exit 1
  fi
fi

# The working tree (tracked files and new ones git does not ignore), unpacked into ~/medfusion on every worker.
archive="${TMPDIR:-/tmp}/medfusion-$tpu.tar.gz"
printf -v pack 'git -C %q ls-files -z --cached --others --exclude-standard | tar -C %q --null -T - -czf %q' \
  "$repo" "$repo" "$archive"
run bash -c "set -o pipefail; $pack"
run "${tpus[@]}" scp --zone="$zone" --worker=all "$archive" "$tpu":medfusion.tar.gz
install='mkdir -p ~/medfusion && tar -xzf ~/medfusion.tar.gz -C ~/medfusion && cd ~/medfusion'
run "${tpus[@]}" ssh "$tpu" --zone="$zone" --worker=all --command="$install && python3 -m pip install -q -e \".[tpu]\""
printf -v train ' %q' --config="$config" --workdir="$workdir" --distributed "$@"
run "${tpus[@]}" ssh "$tpu" --zone="$zone" --worker=all --command="cd ~/medfusion && python3 -m medfusion.train$train"
