"""Process-wide runtime settings that must be made before JAX starts its backend."""

import os

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
