"""Noise schedules on the log-SNR scale and the identities between x, eps, v and z.

A schedule maps t in [0, 1] to lambda = log(alpha^2 / sigma^2), decreasing from `logsnr_max` at t=0 to
`logsnr_min` at t=1, with the variance-preserving convention alpha^2 + sigma^2 = 1.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from medfusion.errors import ConfigError

SCHEDULES = ("cosine", "shifted_cosine")
PREDICTIONS = ("v", "eps")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A log-SNR schedule: `kind` is cosine or shifted_cosine (Hoogeboom et al. 2023, simple diffusion)."""

  kind: str = "cosine"
  logsnr_min: float = -15.0
  logsnr_max: float = 15.0
  shift: float = 0.0  # added to the log-SNR; shifted_cosine uses 2*log(base_resolution/image_size)

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ConfigError(f"config.diffusion.schedule={self.kind!r} is not one of {SCHEDULES}")
    if not self.logsnr_min < self.logsnr_max:
      raise ConfigError(f"config.diffusion.logsnr_min={self.logsnr_min} must be below logsnr_max={self.logsnr_max}")

  @classmethod
  def from_config(cls, diffusion_config, image_size: int) -> "Schedule":
    shift = 0.0
    if diffusion_config.schedule == "shifted_cosine":
      if not diffusion_config.shift_base_resolution > 0:
        raise ConfigError(
          f"config.diffusion.shift_base_resolution={diffusion_config.shift_base_resolution} must be positive"
        )
      shift = 2.0 * math.log(diffusion_config.shift_base_resolution / image_size)
    return cls(diffusion_config.schedule, diffusion_config.logsnr_min, diffusion_config.logsnr_max, shift)

  def logsnr(self, t):
    """log-SNR at time t in [0, 1] (cosine schedule clipped to [logsnr_min, logsnr_max], then shifted)."""
    t_lo = jnp.arctan(jnp.exp(-0.5 * self.logsnr_max))
    t_hi = jnp.arctan(jnp.exp(-0.5 * self.logsnr_min))
    return -2.0 * jnp.log(jnp.tan(t_lo + t * (t_hi - t_lo))) + self.shift


def alpha_sigma(logsnr):
  """(alpha, sigma) with alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def _bcast(a, like):
  return jnp.reshape(a, a.shape + (1,) * (like.ndim - a.ndim))


def diffuse(x, eps, logsnr):
  """z_t = alpha x + sigma eps, with per-example logsnr broadcast over the image axes."""
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, x) * x + _bcast(sigma, x) * eps


def v_from_x_eps(x, eps, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, x) * eps - _bcast(sigma, x) * x


def x_from_z_v(z, v, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(alpha, z) * z - _bcast(sigma, z) * v


def eps_from_z_v(z, v, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return _bcast(sigma, z) * z + _bcast(alpha, z) * v


def x_from_z_eps(z, eps, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return (z - _bcast(sigma, z) * eps) / _bcast(alpha, z)


def eps_from_z_x(z, x, logsnr):
  alpha, sigma = alpha_sigma(logsnr)
  return (z - _bcast(alpha, z) * x) / _bcast(sigma, z)


def predict_eps_x_v(output, z, logsnr, prediction: str):
  """The model's output (eps or v prediction) as (eps_hat, x_hat, v_hat)."""
  if prediction == "v":
    v = output
    return eps_from_z_v(z, v, logsnr), x_from_z_v(z, v, logsnr), v
  if prediction == "eps":
    eps = output
    x = x_from_z_eps(z, eps, logsnr)
    return eps, x, v_from_x_eps(x, eps, logsnr)
  raise ValueError(f"prediction='{prediction}' is not one of {PREDICTIONS}")
