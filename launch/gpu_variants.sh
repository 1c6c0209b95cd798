#!/usr/bin/env bash
# Trains variants of any configs side by side on one GPU without TensorFlow, then exports and sweeps each
# diffusion model on its validation split (K = 64 draws: medfusion.sweep).
#
#   # here (TensorFlow reads the bundled data):
#   python -m medfusion.prepare --config=configs/dermamnist.py --output=prepared/dermamnist
#   # there, with prepared/ and .whl/ carried (launch/gpu_env.sh):
#   bash launch/gpu_variants.sh launch/variants/dermamnist.txt
#
# The variants file has one variant per line: a name, a config file and its overrides (blank lines and lines
# starting with # are skipped). For each, writes $OUT/<name>.tar.gz: pretrained/<name> (diffusion: medfusion.export
# of the run; ResNet: its best/ checkpoint when at most 20 MB) with the run's config.json, metrics.jsonl and log (ResNet: also
# metrics_val.json and predictions_val.npz); $OUT/sweeps.tar.gz (sweeps/<name>/: sweep.json, errors.npz, PNGs);
# $OUT/train_log.txt. TRAIN_TIMEOUT (seconds, default 1200) stops a run with SIGTERM, which saves a checkpoint,
# so a run cut short is still exported.
set -u
cd "$(dirname "$0")/.."
variants_file=$1
out="${OUT:-out}"
mkdir -p "$out" runs pretrained sweeps
source launch/gpu_env.sh
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.1}  # several runs share the GPU
log="$out/train_log.txt"

variant() {  # variant NAME CONFIG OVERRIDES...: train, export, sweep
  local name=$1 config=$2 start=$SECONDS
  shift 2
  timeout -s TERM "${TRAIN_TIMEOUT:-1200}" "$py" -m medfusion.train --config="$config" --workdir="runs/$name" \
    --config.cpu_ynnpack=default --config.train.progress_bar=False "$@" > "runs/$name.log" 2>&1
  echo "== $name: train exit status $?, wall time $((SECONDS - start)) s ($config $*)"
  if [[ $config == *resnet* ]]; then
    mkdir -p "pretrained/$name"
    cp "runs/$name/config.json" "pretrained/$name/"
    # the checkpoint holds the optimizer state too: kept up to 20 MB (a narrow judge), the rest stays in runs/
    (( $(du -sm "runs/$name/best" | cut -f1) <= 20 )) && cp -r "runs/$name/best" "pretrained/$name/"
    cp "runs/$name/"metrics_val.json "runs/$name/"predictions_val.npz "pretrained/$name/" 2>/dev/null
  else  # export and sweep read the run's own config.json (its overrides included)
    "$py" -m medfusion.export --workdir="runs/$name" --output="pretrained/$name" > /dev/null 2>&1
    "$py" -m medfusion.sweep --workdir="pretrained/$name" --split=val --output="sweeps/$name" \
      --config.classify.num_draws=64 --config.classify.batch_size=128 --config.classify.chunk_size=1024 \
      --max_examples="${SWEEP_EXAMPLES:-0}" 2>&1 | tail -1
  fi
  cp "runs/$name/metrics.jsonl" "runs/$name.log" "pretrained/$name/"
  tar czf "$out/$name.tar.gz" "pretrained/$name"
  echo "== $name: done at $((SECONDS - start)) s"
}

{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  while read -r name config overrides; do
    [[ -z $name || $name == \#* ]] && continue
    # shellcheck disable=SC2086
    variant "$name" "$config" $overrides &
  done < "$variants_file"
  wait
  tar czf "$out/sweeps.tar.gz" sweeps
  echo "== $(date -u +%FT%TZ) done"
} 2>&1 | tee "$log"
