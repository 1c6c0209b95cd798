"""The class-conditional denoising loss with min-SNR weighting and label dropout to the null class."""

import jax
import jax.numpy as jnp

from medfusion.diffusion import schedules


def loss_weight(logsnr, prediction: str, weighting: str, gamma: float):
  """Weight on the squared error in the prediction's own space (eps or v).

  min_snr (Hang et al. 2023) weights the x-space error by min(snr, gamma); in eps-space that is
  min(snr, gamma) / snr and in v-space min(snr, gamma) / (snr + 1).
  """
  if weighting == "uniform":
    return jnp.ones_like(logsnr)
  if weighting != "min_snr":
    raise ValueError(f"loss_weighting='{weighting}' is not one of ('min_snr', 'uniform')")
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
  apply_fn,
  x,
  labels,
  key,
  schedule: schedules.Schedule,
  diffusion_config,
  null_class: int,
  label_dropout: float,
):
  """Mean weighted denoising loss over a batch; returns (loss, per-example loss).

  `apply_fn(z, logsnr, labels)` is the model; `label_dropout` is the training rate (0 for validation).
  Timesteps, noise and label dropout come from `key`, drawn per example for the whole (global) batch so the
  loss does not depend on how the batch is sharded.
  """
  key_t, key_eps, key_drop = jax.random.split(key, 3)
  t = jax.random.uniform(key_t, (x.shape[0],))
  eps = jax.random.normal(key_eps, x.shape, x.dtype)
  labels = drop_labels(key_drop, labels, label_dropout, null_class)
  logsnr = schedule.logsnr(t)
  z = schedules.diffuse(x, eps, logsnr)
  output = apply_fn(z, logsnr, labels).astype(jnp.float32)
  target = eps if diffusion_config.prediction == "eps" else schedules.v_from_x_eps(x, eps, logsnr)
  mse = jnp.mean(jnp.square(output - target), axis=tuple(range(1, x.ndim)))
  weight = loss_weight(
    logsnr, diffusion_config.prediction, diffusion_config.loss_weighting, diffusion_config.min_snr_gamma
  )
  per_example = weight * mse
  return jnp.mean(per_example), per_example
