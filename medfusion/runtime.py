"""Process-wide XLA settings: the CPU's YNNPACK choice (before JAX starts) and compilation of run-once functions."""

import os

import jax

# XLA:CPU hands convolutions, matmuls and reductions to YNNPACK by default; on the 2-core reference CPU
# that path used about one core (see README, Performance). Values of `config.cpu_ynnpack`:
YNNPACK_FUSION_TYPES = {
  "default": None,  # leave XLA's default
  "no_convolutions": "-individual_convolution",  # YNNPACK off for convolutions only
  "off": "",  # YNNPACK off entirely (Eigen)
}


def configure_cpu(ynnpack: str) -> None:
  """Sets XLA's YNNPACK fusion flag unless XLA_FLAGS already sets it; call before the first JAX op."""
  if ynnpack not in YNNPACK_FUSION_TYPES:
    raise ValueError(f"config.cpu_ynnpack='{ynnpack}' is not one of {tuple(YNNPACK_FUSION_TYPES)}")
  value = YNNPACK_FUSION_TYPES[ynnpack]
  flags = os.environ.get("XLA_FLAGS", "")
  if value is None or "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type={value}".strip()


def run_once(fn, out_shardings=None):
  """Calls `fn()` jitted at XLA optimisation level 0: for functions that run once (parameter and state
  initialisation), where the CPU compiles their ~20 random initialisers ~5x faster so (2-core reference CPU:
  ~40 s -> ~8 s for the ResNet); values agree to float32 rounding."""
  return jax.jit(fn, out_shardings=out_shardings, compiler_options={"xla_backend_optimization_level": 0})()
