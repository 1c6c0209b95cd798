#!/usr/bin/env bash
# Both benchmarks, small and paper scale and the original work's models, on one GPU, in about 10 minutes.
#
#   bash benchmarks/gpu.sh              # JSON and a log in $OUT if set, else benchmarks/results
#   bash benchmarks/gpu.sh paper        # only the paper-scale bfloat16 kernel and train step (about 4 minutes)
#
# Needs python3 with jax (CUDA), flax, optax, orbax-checkpoint, scipy, absl-py, tqdm and ml_collections. The lent
# GPU image has all but ml_collections: carry its wheel in .whl/ (see benchmarks/README.md; launch/gpu_env.sh
# installs it into a temporary folder). TensorFlow is not needed (no --workdir here). Each benchmark rewrites its
# JSON after every configuration, so a timeout keeps what finished; bfloat16 runs first for that reason.
set -u
cd "$(dirname "$0")/.."
only=${1:-all}
[[ $only == all || $only == paper ]] || { echo "gpu.sh: unknown selection '$only' (all | paper)" >&2; exit 2; }
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
log="$out/gpu_log.txt"
source launch/gpu_env.sh

{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  "$py" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  # Kernel: small B=64 K=32 C=2 in chunks of 1024 evaluations; paper B=16 K=8 C=2 in chunks of 32 (the CPU
  # default of 32 would leave the GPU idle at small scale); loop batch 16. Paper float32 runs last: it is the
  # slowest and the least useful (the targets are bfloat16).
  if [[ $only == paper ]]; then
    timeout 120 "$py" -m benchmarks.kernel --model=paper --dtypes=bfloat16 --repeats=2 --chunk_size=32 \
      --tag=paper --out_dir="$out"
    echo "== kernel paper bfloat16 exit status $?"
    timeout 120 "$py" -m benchmarks.train --model=paper --dtypes=bfloat16 --repeats=3 --out_dir="$out" --tag=paper
    echo "== train paper bfloat16 exit status $?"
    echo "== $(date -u +%FT%TZ) done"
    exit 0
  fi
  timeout 90 "$py" -m benchmarks.kernel --model=small --dtypes=bfloat16,float32 --repeats=3 --chunk_size=1024 \
    --tag=small --out_dir="$out"
  echo "== kernel small exit status $?"
  timeout 120 "$py" -m benchmarks.kernel --model=paper --dtypes=bfloat16 --repeats=3 --chunk_size=32 \
    --tag=paper --out_dir="$out"
  echo "== kernel paper bfloat16 exit status $?"
  # Train step: small batch 32, paper batch 8, 10 steps per timed repeat.
  timeout 150 "$py" -m benchmarks.train --model=small,paper --dtypes=bfloat16,float32 --repeats=3 --out_dir="$out"
  echo "== train exit status $?"
  # The original work's models (configs/chexpert.py): the UNet on the Haar wavelet input and DiT-B/4 (pixel space
  # here), bf16: the train step at batch 8, and the kernel at the original's 51 draws per image (B=8, C=2).
  timeout 150 "$py" -m benchmarks.train --model=original_unet,dit --dtypes=bfloat16 --repeats=3 --out_dir="$out" \
    --tag=original
  echo "== train original exit status $?"
  timeout 150 "$py" -m benchmarks.kernel --model=original_unet,dit --dtypes=bfloat16 --num_draws=51 --batch_size=8 \
    --repeats=2 --chunk_size=32 --tag=original_51_draws --out_dir="$out"
  echo "== kernel original exit status $?"
  timeout 120 "$py" -m benchmarks.kernel --model=paper --dtypes=float32 --repeats=2 --chunk_size=32 \
    --tag=paper_float32 --out_dir="$out"
  echo "== kernel paper float32 exit status $?"
  # What a user waits for: medfusion.score on the shipped model's validation split, end to end, at the full budget
  # and with early stopping (needs prepared/pneumoniamnist carried: python -m medfusion.prepare
  # --config=configs/pneumoniamnist.py --output=prepared/pneumoniamnist).
  timeout 150 "$py" -m benchmarks.score --workdir=pretrained/pneumoniamnist --split=val --out_dir="$out" \
    --overrides="--config.data.source=arrays --config.data.folder=prepared/pneumoniamnist \
--config.classify.batch_size=128 --config.classify.chunk_size=1024" \
    --rules="full:--config.classify.adaptive=none,default:"
  echo "== score exit status $?"
  echo "== $(date -u +%FT%TZ) done"
} 2>&1 | tee "$log"
