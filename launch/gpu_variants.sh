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
# starting with # are skipped). For each, keeps pretrained/<name> (diffusion: medfusion.export of the run; ResNet:
# its best/ checkpoint when at most 20 MB) with the run's config.json, metrics.jsonl and log (ResNet: also
# metrics_val.json and predictions_val.npz), and sweeps/<name>/ (sweep.json, errors.npz, PNGs). Everything is packed
# into $OUT/variants.tar.gz, split into parts of 15 MB (variants.tar.gz.part00, ...; the lent machine returns at
# most 8 files of 16 MiB): `cat variants.tar.gz.part* | tar xz` unpacks it. The log is $OUT/train_log.txt.
#
# Environment: TRAIN_TIMEOUT (seconds, default 1200) stops a run with SIGTERM, which saves a checkpoint, so a run cut
# short is still exported; SWEEP_TIMEOUT (default 300) bounds each sweep; SWEEP_EXAMPLES (0: all) the images swept;
# PARAMS_FOR (space-separated names; default all) the runs whose parameters are packed, the others bring back their
# config, metrics, log and sweep; MPS=1 starts CUDA's Multi-Process Service so the runs' kernels share the GPU at
# once instead of in time slices (kept only if a JAX process then starts; otherwise the runs go on without it).
set -u
cd "$(dirname "$0")/.."
variants_file=$1
out="${OUT:-out}"
mkdir -p "$out" runs pretrained sweeps
source launch/gpu_env.sh
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.1}  # several runs share the GPU
log="$out/train_log.txt"

start_mps() {
  command -v nvidia-cuda-mps-control > /dev/null || { echo "== MPS: nvidia-cuda-mps-control not found"; return; }
  nvidia-cuda-mps-control -d || { echo "== MPS: the daemon did not start"; return; }
  if timeout 60 "$py" -c "import jax; print(jax.numpy.ones(4).sum().block_until_ready(), jax.devices())"; then
    echo "== MPS: on"
  else
    echo quit | nvidia-cuda-mps-control
    echo "== MPS: a JAX process did not start under it; off"
  fi
}

keeps_params() {
  [[ -z ${PARAMS_FOR:-} || " $PARAMS_FOR " == *" $1 "* ]]
}

variant() {  # variant NAME CONFIG OVERRIDES...: train, export, sweep
  local name=$1 config=$2 start=$SECONDS
  shift 2
  timeout -s TERM "${TRAIN_TIMEOUT:-1200}" "$py" -m medfusion.train --config="$config" --workdir="runs/$name" \
    --config.cpu_ynnpack=default --config.train.progress_bar=False "$@" > "runs/$name.log" 2>&1
  echo "== $name: train exit status $?, wall time $((SECONDS - start)) s, last $(grep -o '"step": [0-9]*' \
    "runs/$name/metrics.jsonl" 2>/dev/null | tail -1) ($config $*)"
  if [[ $config == *resnet* ]]; then
    mkdir -p "pretrained/$name"
    cp "runs/$name/config.json" "pretrained/$name/"
    # the checkpoint holds the optimizer state too: kept up to 20 MB (a narrow judge), the rest stays in runs/
    if keeps_params "$name" && (( $(du -sm "runs/$name/best" | cut -f1) <= 20 )); then
      cp -r "runs/$name/best" "pretrained/$name/"
    fi
    cp "runs/$name/"metrics_val.json "runs/$name/"predictions_val.npz "pretrained/$name/" 2>/dev/null
  else  # export and sweep read the run's own config.json (its overrides included)
    "$py" -m medfusion.export --workdir="runs/$name" --output="pretrained/$name" > /dev/null 2>&1
    timeout "${SWEEP_TIMEOUT:-300}" "$py" -m medfusion.sweep --workdir="pretrained/$name" --split=val \
      --output="sweeps/$name" --config.classify.num_draws=64 --config.classify.batch_size=128 \
      --config.classify.chunk_size=1024 --max_examples="${SWEEP_EXAMPLES:-0}" 2>&1 | tail -1
    keeps_params "$name" || rm -rf "pretrained/$name/params"
  fi
  cp "runs/$name/metrics.jsonl" "runs/$name.log" "pretrained/$name/"
  echo "== $name: done at $((SECONDS - start)) s"
}

{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  [[ ${MPS:-0} == 1 ]] && start_mps
  while read -r name config overrides; do
    [[ -z $name || $name == \#* ]] && continue
    # shellcheck disable=SC2086
    variant "$name" "$config" $overrides &
  done < "$variants_file"
  wait
  [[ ${MPS:-0} == 1 ]] && echo quit | nvidia-cuda-mps-control 2> /dev/null
  echo "== $(date -u +%FT%TZ) done"
} 2>&1 | tee "$log"
kept=()
while read -r name _; do
  [[ -z $name || $name == \#* ]] && continue
  for dir in "pretrained/$name" "sweeps/$name"; do [[ -d $dir ]] && kept+=("$dir"); done
done < "$variants_file"
tar czf - "${kept[@]}" | split -b 15M -d - "$out/variants.tar.gz.part"
ls -l "$out"
