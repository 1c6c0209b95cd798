# Sourced by the scripts that run on a lent GPU machine (launch/gpu_pneumoniamnist.sh, benchmarks/gpu.sh):
# the repository on PYTHONPATH, plus the pure-Python wheels carried in .whl/ (ml_collections, tensorboardX) that
# the machine's image lacks, installed into a temporary folder (no index, no dependencies). Sets $py.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
py="${PYTHON:-python3}"
if ! "$py" -c "import ml_collections, tensorboardX" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "ml_collections or tensorboardX is missing and no .whl/ was carried; see benchmarks/README.md" >&2
    exit 2
  fi
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 2
  export PYTHONPATH="$PYTHONPATH:$site"
fi
