r"""Fills in FLOP/s and fraction of peak for kernel results whose run got no FLOP count from XLA.

  python -m benchmarks.flops benchmarks/results/kernel_nvidia-h200_2026-11-26_small.json ...

jax 0.11 on the lent GPU gave no cost analysis for the lowered kernel, so those files hold throughput but no
utilisation. XLA's FLOP count of the pre-optimisation HLO does not depend on the backend: this script counts one
network evaluation of each preset and dtype here (any machine), multiplies by the measured evaluations per
second, and divides by the peak stored in the same file. It adds `flops_filled_in` (the count, its source and
this command) to each result and rewrites the file; measured fields are left as they were.
"""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp

from benchmarks import common
from configs import default
from medfusion.models import make_denoiser
from medfusion.training import state as state_lib


@functools.cache
def flops_per_evaluation(name: str, dtype: str) -> float:
  """XLA's FLOPs for one forward pass of the preset's UNet on one image (abstract parameters: nothing allocated)."""
  config = default.get_config(f"model={name}")
  model = make_denoiser(config, dtype, 0.0)
  params = jax.eval_shape(lambda: state_lib.init_params(config, make_denoiser(config)))
  size, channels = config.data.image_size, config.data.num_channels
  image = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  labels, logsnr = jax.ShapeDtypeStruct((1,), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.float32)
  apply = jax.jit(lambda p, x, s, y: model.apply({"params": p}, x, s, y))
  return common.xla_flops(apply.lower(params, image, logsnr, labels))


def fill(path: str) -> None:
  with open(path) as f:
    payload = json.load(f)
  for run in payload["runs"]:
    for result in run.get("results", []):
      if "kernel" not in result or result["kernel"].get("fraction_of_peak") is not None or "error" in result:
        continue
      per_nfe = flops_per_evaluation(result["model"], result["dtype"])
      achieved = per_nfe * result["kernel"]["nfe_per_s"]
      peak = run["peaks"]["peak_flops_per_s"][result["dtype"]]
      result["flops_filled_in"] = {
        "xla_flops_per_nfe": per_nfe,
        "achieved_flops_per_s": achieved,
        "fraction_of_peak": achieved / peak,
        "loop_fraction_of_peak": per_nfe * result["loop"]["nfe_per_s"] / peak if "loop" in result else None,
        **(
          {"fraction_of_tf32_peak": achieved / run["peaks"]["tf32_peak_flops_per_s"]}
          if result["dtype"] == "float32" and "tf32_peak_flops_per_s" in run["peaks"]
          else {}
        ),
        "source": "pre-optimisation HLO of one UNet forward pass, counted on "
        f"{jax.devices()[0].device_kind} with jax {jax.__version__}",
        "command": "python -m benchmarks.flops " + " ".join(sys.argv[1:]),
      }
      print(
        f"{path}: {result['model']} {result['dtype']}: {per_nfe / 1e9:.3f} GFLOP per evaluation, "
        f"{achieved / 1e12:.1f} TFLOP/s, {achieved / peak:.1%} of peak"
      )
  common.write_json(path, payload)


def main(paths: list[str]) -> int:
  """Fills each result file named; `--help` or no file prints the usage. Returns the exit status."""
  if not paths or any(p in ("-h", "--help") for p in paths):
    print(__doc__.strip())
    return 0 if paths else 2
  missing = [p for p in paths if not p.endswith(".json") or not os.path.isfile(p)]
  if missing:
    print(f"error: not a result file: {missing[0]}", file=sys.stderr)
    return 2
  for path in paths:
    fill(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
