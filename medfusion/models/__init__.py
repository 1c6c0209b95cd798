"""Networks: the class-conditional denoisers and the discriminative baseline.

`make_denoiser(config)` is the one place a denoiser is built from `config.model` (its `type` picks the network,
`wavelet` whether it runs on the one-level Haar transform of the image), so training, the error kernel, the
evaluators and the benchmarks all build the same one. `model_kind` says from `config.model.type` whether a config
describes a denoiser or the ResNet classifier; `make_model` and `init_variables` build either, so the trainers and
reading a model from disk (modeldir) share them.
"""

import copy
import dataclasses

import jax
import jax.numpy as jnp

from medfusion.errors import ConfigError
from medfusion.models import dit, resnet, unet, wavelet

DENOISERS = {"unet": (unet.UNetConfig, unet.UNet), "dit": (dit.DiTConfig, dit.DiT)}
CLASSIFIERS = tuple(resnet.STAGE_SIZES)  # config.model.type of the discriminative baseline (configs/*_resnet.py)


def model_kind(config) -> str:
  """'diffusion' when `config.model.type` names a denoiser, 'resnet' when it names the ResNet classifier."""
  if config.model.type in CLASSIFIERS:
    return "resnet"
  if config.model.type in DENOISERS:
    return "diffusion"
  raise ConfigError(f"config.model.type={config.model.type!r} is not one of {(*DENOISERS, *CLASSIFIERS)}")


def uses_wavelet(config) -> bool:
  return bool(config.model.wavelet)


def network_config(config):
  """`config` as the network sees it: with `config.model.wavelet`, half the image size and 4x the channels."""
  if not uses_wavelet(config):
    return config
  if config.data.image_size % 2:
    raise ConfigError(f"config.data.image_size={config.data.image_size} must be even with config.model.wavelet=True")
  inner = copy.deepcopy(config)
  inner.data.image_size = config.data.image_size // 2
  inner.data.num_channels = 4 * config.data.num_channels
  return inner


def denoiser_config(config, dtype: str | None = None, dropout: float | None = None):
  """The typed (and so validated) architecture of `config.model`; `dtype`/`dropout` override the config's.

  With `config.model.wavelet` it is the architecture of the network inside the wavelet transform.
  """
  if config.model.type not in DENOISERS:
    raise ConfigError(f"config.model.type={config.model.type!r} is not one of {tuple(DENOISERS)}")
  try:
    spec = DENOISERS[config.model.type][0].from_config(network_config(config))
  except ConfigError as e:
    if not uses_wavelet(config):
      raise
    raise ConfigError(f"{e} (with config.model.wavelet=True the network sees half the image size)") from None
  overrides = {k: v for k, v in (("dtype", dtype), ("dropout", dropout)) if v is not None}
  return dataclasses.replace(spec, **overrides) if overrides else spec


def make_denoiser(config, dtype: str | None = None, dropout: float | None = None):
  """The denoiser module of `config.model`: apply(variables, z, logsnr, labels, train=False) -> eps or v.

  It takes and returns pixel-space arrays whether or not `config.model.wavelet` is set.
  """
  network = DENOISERS[config.model.type][1](denoiser_config(config, dtype, dropout))
  return wavelet.WaveletDenoiser(network) if uses_wavelet(config) else network


def make_model(config):
  """The network of `config.model`: the denoiser (`make_denoiser`) or the ResNet classifier."""
  if model_kind(config) == "resnet":
    return resnet.ResNet(resnet.ResNetConfig.from_config(config))
  return make_denoiser(config)


def init_variables(config, model) -> dict:
  """Fresh variables of `make_model(config)` from `config.seed`: {'params'} of a denoiser, {'params',
  'batch_stats'} of the ResNet. Trace it (jit or eval_shape): eager is slow."""
  size, channels = config.data.image_size, config.data.num_channels
  key, images = jax.random.key(config.seed), jnp.zeros((1, size, size, channels))
  if model_kind(config) == "resnet":
    return dict(model.init(key, images))
  return dict(model.init(key, images, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)))


def init_params(config, model):
  """Fresh denoiser parameters from `config.seed`."""
  return init_variables(config, model)["params"]
