"""Networks: the class-conditional denoisers and the discriminative baseline.

`make_denoiser(config)` is the one place a denoiser is built from `config.model` (its `type` picks the network),
so training, the error kernel, the evaluators and the benchmarks all build the same one.
"""

import dataclasses

from medfusion.errors import ConfigError
from medfusion.models import unet

DENOISERS = {"unet": (unet.UNetConfig, unet.UNet)}


def denoiser_config(config, dtype: str | None = None, dropout: float | None = None):
  """The typed (and so validated) architecture of `config.model`; `dtype`/`dropout` override the config's."""
  if config.model.type not in DENOISERS:
    raise ConfigError(f"config.model.type={config.model.type!r} is not one of {tuple(DENOISERS)}")
  spec = DENOISERS[config.model.type][0].from_config(config)
  overrides = {k: v for k, v in (("dtype", dtype), ("dropout", dropout)) if v is not None}
  return dataclasses.replace(spec, **overrides) if overrides else spec


def make_denoiser(config, dtype: str | None = None, dropout: float | None = None):
  """The denoiser module of `config.model`: apply(variables, z, logsnr, labels, train=False) -> eps or v."""
  spec = denoiser_config(config, dtype, dropout)
  return DENOISERS[config.model.type][1](spec)
