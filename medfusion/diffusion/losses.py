"""The class-conditional denoising loss (min-SNR weighting, label dropout to the null class, optionally more draws
in the classifier's t range) and an optional classification term on the per-class denoising errors."""

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
  # Share of training timesteps drawn in `focus_range` (the classifier's [t_min, t_max]) instead of over [0, 1];
  # every draw is weighted by 1 / density, so the expected loss is the same and only where it is sampled changes.
  t_focus: float = 0.0
  focus_range: tuple[float, float] = (0.0, 1.0)
  # The classification term: weight (lambda), softmax temperature relative to the image's mean class error, and
  # every how many steps it is computed.
  class_weight: float = 0.0
  class_temperature: float = 0.05
  class_every: int = 1

  def __post_init__(self):
    if self.prediction not in schedules.PREDICTIONS:
      raise ConfigError(f"config.diffusion.prediction={self.prediction!r} is not one of {schedules.PREDICTIONS}")
    if self.weighting not in WEIGHTINGS:
      raise ConfigError(f"config.diffusion.loss_weighting={self.weighting!r} is not one of {WEIGHTINGS}")
    if not self.min_snr_gamma > 0:
      raise ConfigError(f"config.diffusion.min_snr_gamma={self.min_snr_gamma!r} must be positive")
    if not 0.0 <= self.label_dropout < 1.0:
      raise ConfigError(f"config.diffusion.label_dropout={self.label_dropout!r} must be in [0, 1)")
    if not 0.0 <= self.t_focus < 1.0:
      raise ConfigError(f"config.diffusion.t_focus={self.t_focus!r} must be in [0, 1)")
    if not self.class_weight >= 0.0:
      raise ConfigError(f"config.diffusion.class_loss_weight={self.class_weight!r} must be >= 0")
    if not self.class_temperature > 0.0:
      raise ConfigError(f"config.diffusion.class_loss_temperature={self.class_temperature!r} must be positive")
    if not (isinstance(self.class_every, int) and self.class_every > 0):
      raise ConfigError(f"config.diffusion.class_loss_every={self.class_every!r} must be a positive integer")

  @classmethod
  def from_config(cls, config) -> "LossSpec":
    """From a diffusion config: `config.diffusion` and the classifier's t range (`config.classify`)."""
    d = config.diffusion
    return cls(
      d.prediction,
      d.loss_weighting,
      d.min_snr_gamma,
      d.label_dropout,
      d.t_focus,
      (float(config.classify.t_min), float(config.classify.t_max)),
      d.class_loss_weight,
      d.class_loss_temperature,
      d.class_loss_every,
    )


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


def training_timesteps(key, n: int, t_focus: float, focus_range):
  """(t, weight) of n training draws: a share `t_focus` uniform in `focus_range`, the rest uniform in [0, 1];
  weight = 1 / density, so E[weight * loss(t)] is the loss averaged over uniform t whatever the share."""
  if t_focus == 0.0:
    return jax.random.uniform(key, (n,)), jnp.ones((n,))
  key_u, key_in = jax.random.split(key)
  lo, hi = focus_range
  u = jax.random.uniform(key_u, (n,))
  t = jnp.where(jax.random.bernoulli(key_in, t_focus, (n,)), lo + u * (hi - lo), u)
  inside = (t >= lo) & (t <= hi)
  density = (1.0 - t_focus) + t_focus * inside / (hi - lo)
  return t, 1.0 / density


def denoising_loss(
  apply_fn, x, labels, key, schedule: schedules.Schedule, spec: LossSpec, null_class: int, train: bool
):
  """Mean weighted denoising loss over a batch; returns (loss, per-example loss).

  `apply_fn(z, logsnr, labels)` is the model; labels drop to the null class at `spec.label_dropout` only when
  `train` (validation measures the conditional loss). Timesteps, noise and label dropout come from `key`, drawn
  per example for the whole (global) batch so the loss does not depend on how the batch is sharded. In training,
  `spec.t_focus` moves draws into the classifier's t range, importance-weighted; validation draws t uniformly.
  """
  key_t, key_eps, key_drop = jax.random.split(key, 3)
  t, t_weight = training_timesteps(key_t, x.shape[0], spec.t_focus if train else 0.0, spec.focus_range)
  eps = jax.random.normal(key_eps, x.shape, x.dtype)
  labels = drop_labels(key_drop, labels, spec.label_dropout if train else 0.0, null_class)
  logsnr = schedule.logsnr(t)
  z = schedules.diffuse(x, eps, logsnr)
  output = apply_fn(z, logsnr, labels).astype(jnp.float32)
  target = eps if spec.prediction == "eps" else schedules.v_from_x_eps(x, eps, logsnr)
  mse = jnp.mean(jnp.square(output - target), axis=tuple(range(1, x.ndim)))
  per_example = loss_weight(logsnr, spec.prediction, spec.weighting, spec.min_snr_gamma) * mse
  return jnp.mean(t_weight * per_example), per_example


def class_logits(errors, temperature: float):
  """Logits [B, C] of per-class denoising errors [B, C]: the negative errors relative to the image's mean error
  (held constant), over the temperature. Relative errors keep the scale the same at every noise level."""
  scale = jax.lax.stop_gradient(jnp.mean(errors, axis=1, keepdims=True))
  return -errors / (temperature * scale)


def class_loss(apply_fn, x, labels, key, schedule: schedules.Schedule, spec: LossSpec, num_classes: int):
  """Cross-entropy of the true class under `class_logits` of the errors of every class at one shared (t, eps) per
  image, t uniform in the classifier's range: C evaluations per image, a paired comparison like the classifier's."""
  b = x.shape[0]
  key_t, key_eps = jax.random.split(key)
  lo, hi = spec.focus_range
  t = lo + jax.random.uniform(key_t, (b,)) * (hi - lo)
  eps = jax.random.normal(key_eps, x.shape, x.dtype)
  logsnr = schedule.logsnr(t)
  z = schedules.diffuse(x, eps, logsnr)
  target = eps if spec.prediction == "eps" else schedules.v_from_x_eps(x, eps, logsnr)
  classes = jnp.repeat(jnp.arange(num_classes), b)  # class-major: row c * B + i is image i under class c
  tile = lambda a: jnp.tile(a, (num_classes,) + (1,) * (a.ndim - 1))  # noqa: E731
  output = apply_fn(tile(z), tile(logsnr), classes).astype(jnp.float32)
  mse = jnp.mean(jnp.square(output - tile(target)), axis=tuple(range(1, x.ndim)))
  logits = class_logits(mse.reshape(num_classes, b).T, spec.class_temperature)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0])
