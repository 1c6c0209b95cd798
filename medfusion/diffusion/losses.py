"""The class-conditional denoising loss with min-SNR weighting and label dropout to the null class."""

import dataclasses

import jax
import jax.numpy as jnp

from medfusion.diffusion import schedules
from medfusion.errors import ConfigError

WEIGHTINGS = ("min_snr", "uniform")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the denoising loss needs from `config.diffusion`."""

  prediction: str = "v"
  weighting: str = "min_snr"
  min_snr_gamma: float = 5.0
  label_dropout: float = 0.1

  def __post_init__(self):
    if self.prediction not in schedules.PREDICTIONS:
      raise ConfigError(f"config.diffusion.prediction={self.prediction!r} is not one of {schedules.PREDICTIONS}")
    if self.weighting not in WEIGHTINGS:
      raise ConfigError(f"config.diffusion.loss_weighting={self.weighting!r} is not one of {WEIGHTINGS}")
    if not self.min_snr_gamma > 0:
      raise ConfigError(f"config.diffusion.min_snr_gamma={self.min_snr_gamma!r} must be positive")
    if not 0.0 <= self.label_dropout < 1.0:
      raise ConfigError(f"config.diffusion.label_dropout={self.label_dropout!r} must be in [0, 1)")

  @classmethod
  def from_config(cls, diffusion_config) -> "LossSpec":
    d = diffusion_config
    return cls(d.prediction, d.loss_weighting, d.min_snr_gamma, d.label_dropout)


def loss_weight(logsnr, prediction: str, weighting: str, gamma: float):
  """Weight on the squared error in the prediction's own space (eps or v).

  min_snr (Hang et al. 2023) weights the x-space error by min(snr, gamma); in eps-space that is
  min(snr, gamma) / snr and in v-space min(snr, gamma) / (snr + 1).
  """
  if weighting == "uniform":
    return jnp.ones_like(logsnr)
  if weighting != "min_snr":
    raise ValueError(f"loss_weighting='{weighting}' is not one of {WEIGHTINGS}")
  snr = jnp.exp(logsnr)
  clipped = jnp.minimum(snr, gamma)
  if prediction == "eps":
    return clipped / snr
  if prediction == "v":
    return clipped / (snr + 1.0)
  raise ValueError(f"prediction='{prediction}' is not one of ('v', 'eps')")


def drop_labels(key, labels, rate: float, null_class: int):
  """Replaces each label by the null class with probability `rate` (classifier-free guidance)."""
  return jnp.where(jax.random.bernoulli(key, rate, labels.shape), null_class, labels)


def denoising_loss(
  apply_fn, x, labels, key, schedule: schedules.Schedule, spec: LossSpec, null_class: int, train: bool
):
  """Mean weighted denoising loss over a batch; returns (loss, per-example loss).

  `apply_fn(z, logsnr, labels)` is the model; labels drop to the null class at `spec.label_dropout` only when
  `train` (validation measures the conditional loss). Timesteps, noise and label dropout come from `key`, drawn
  per example for the whole (global) batch so the loss does not depend on how the batch is sharded.
  """
  key_t, key_eps, key_drop = jax.random.split(key, 3)
  t = jax.random.uniform(key_t, (x.shape[0],))
  eps = jax.random.normal(key_eps, x.shape, x.dtype)
  labels = drop_labels(key_drop, labels, spec.label_dropout if train else 0.0, null_class)
  logsnr = schedule.logsnr(t)
  z = schedules.diffuse(x, eps, logsnr)
  output = apply_fn(z, logsnr, labels).astype(jnp.float32)
  target = eps if spec.prediction == "eps" else schedules.v_from_x_eps(x, eps, logsnr)
  mse = jnp.mean(jnp.square(output - target), axis=tuple(range(1, x.ndim)))
  per_example = loss_weight(logsnr, spec.prediction, spec.weighting, spec.min_snr_gamma) * mse
  return jnp.mean(per_example), per_example
