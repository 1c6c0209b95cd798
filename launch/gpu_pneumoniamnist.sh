#!/usr/bin/env bash
# Trains PneumoniaMNIST diffusion variants side by side on one GPU without TensorFlow, exports each, and sweeps
# each on the validation split (K = 64 draws: medfusion.sweep).
#
#   # here (TensorFlow reads the bundled data):
#   python -m medfusion.prepare --config=configs/pneumoniamnist.py --output=prepared/pneumoniamnist
#   # there, with prepared/ and .whl/ carried (launch/gpu_env.sh):
#   bash launch/gpu_pneumoniamnist.sh "name:--config.x=1 --config.y=2" ...
#
# Each argument is a variant: a name, a colon, and config overrides of configs/pneumoniamnist.py. Writes
# $OUT/<name>.tar.gz (pretrained/<name>: medfusion.export of the run, its config.json and metrics.jsonl),
# $OUT/sweeps.tar.gz (sweeps/<name>/: sweep.json, errors.npz, PNGs), and $OUT/train_log.txt.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-out}"
mkdir -p "$out"
source launch/gpu_env.sh
data="--config.data.source=arrays --config.data.folder=${PREPARED:-prepared/pneumoniamnist} --config.cpu_ynnpack=default"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.15}  # several runs share the GPU
log="$out/train_log.txt"

variant() {  # variant NAME OVERRIDES: train, export, sweep
  local name=$1 overrides=$2 start=$SECONDS
  # shellcheck disable=SC2086
  "$py" -m medfusion.train --config=configs/pneumoniamnist.py --workdir="runs/$name" $data $overrides \
    --config.train.progress_bar=False > "runs/$name.log" 2>&1
  echo "== $name: train exit status $?, wall time $((SECONDS - start)) s ($overrides)"
  # export and sweep read the run's own config.json (its overrides included)
  "$py" -m medfusion.export --workdir="runs/$name" --output="pretrained/$name" > /dev/null 2>&1
  cp "runs/$name/metrics.jsonl" "runs/$name.log" "pretrained/$name/"
  "$py" -m medfusion.sweep --workdir="pretrained/$name" --split=val --output="sweeps/$name" \
    --config.classify.num_draws=64 --config.classify.batch_size=128 --config.classify.chunk_size=1024 \
    --max_examples="${SWEEP_EXAMPLES:-0}" 2>&1 | tail -1
  echo "== $name: done at $((SECONDS - start)) s"
}

{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  mkdir -p runs pretrained sweeps
  for spec in "$@"; do
    variant "${spec%%:*}" "${spec#*:}" &
  done
  wait
  for spec in "$@"; do
    name="${spec%%:*}"
    tar czf "$out/$name.tar.gz" "pretrained/$name"
  done
  tar czf "$out/sweeps.tar.gz" sweeps
  echo "== $(date -u +%FT%TZ) done"
} 2>&1 | tee "$log"
