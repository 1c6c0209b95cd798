"""The error kernel: E[b, c, r] for B images x C classes x R draws in one jitted, sharded call.

z_t is computed once per (image, draw) and reused for every class; the model runs on all
(class, draw) pairs of the batch as one flat vector of evaluations, split into fixed-size chunks
(`lax.map`) so memory stays bounded. Images are sharded over the mesh's `data` axis with `shard_map`:
each device scores its own images with no communication.
"""

import dataclasses
import functools

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from medfusion import sharding
from medfusion.classify import draws
from medfusion.diffusion import schedules
from medfusion.errors import ConfigError

ERRORS = ("eps_mse", "x_mse", "v_mse", "eps_l1")


def pixel_error(kind: str, output, x, eps, z, logsnr, prediction: str):
  """Per-pixel error [N, H, W, C] of one model output against the true x / eps / v of its draw."""
  eps_hat, x_hat, v_hat = schedules.predict_eps_x_v(output, z, logsnr, prediction)
  if kind == "eps_mse":
    return jnp.square(eps_hat - eps)
  if kind == "eps_l1":
    return jnp.abs(eps_hat - eps)
  if kind == "x_mse":
    return jnp.square(x_hat - x)
  if kind == "v_mse":
    return jnp.square(v_hat - schedules.v_from_x_eps(x, eps, logsnr))
  raise ValueError(f"error='{kind}' is not one of {ERRORS}")


def pair_error(kind: str, output, x, eps, z, logsnr, prediction: str):
  """Per-example error of one model output against the true x / eps / v of its draw: the mean of `pixel_error`."""
  return jnp.mean(pixel_error(kind, output, x, eps, z, logsnr, prediction), axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """Everything that fixes the compiled kernel besides array shapes."""

  seed: int
  num_draws: int  # K: length of each image's draw sequence
  timesteps: str
  t_min: float
  t_max: float
  error: str
  chunk_size: int  # model evaluations per lax.map step, per device
  prediction: str
  schedule: schedules.Schedule
  symmetries: str = "none"  # none | flips_rot90: draw k also applies one of the 8 symmetries of the square to x

  def __post_init__(self):
    for name in ("num_draws", "chunk_size"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"config.classify.{name}={getattr(self, name)!r} must be positive")
    if self.timesteps not in draws.TIMESTEPS:
      raise ConfigError(f"config.classify.timesteps={self.timesteps!r} is not one of {draws.TIMESTEPS}")
    if self.error not in ERRORS:
      raise ConfigError(f"config.classify.error={self.error!r} is not one of {ERRORS}")
    if not 0.0 <= self.t_min < self.t_max <= 1.0:
      raise ConfigError(
        f"config.classify.t_min={self.t_min} and t_max={self.t_max} must satisfy 0 <= t_min < t_max <= 1"
      )
    if self.prediction not in schedules.PREDICTIONS:
      raise ConfigError(f"config.diffusion.prediction={self.prediction!r} is not one of {schedules.PREDICTIONS}")
    if self.symmetries not in draws.SYMMETRIES:
      raise ConfigError(f"config.classify.symmetries={self.symmetries!r} is not one of {draws.SYMMETRIES}")

  @classmethod
  def from_config(cls, config) -> "KernelSpec":
    c = config.classify
    return cls(
      config.seed,
      c.num_draws,
      c.timesteps,
      c.t_min,
      c.t_max,
      c.error,
      c.chunk_size,
      config.diffusion.prediction,
      schedules.Schedule.from_config(config.diffusion, config.data.image_size),
      c.symmetries,
    )


def image_draws(spec: KernelSpec, indices):
  """(keys [N], t [N, K]) of the images `indices`: each image's key and the timesteps of its draws 0..K-1 (the
  draws every user of the kernel's draws shares: the kernel, medfusion.sweep, the benchmarks' loop)."""
  keys = jax.vmap(lambda i: draws.image_key(spec.seed, i))(indices)
  return keys, jax.vmap(lambda k: draws.timesteps(k, spec.num_draws, spec.timesteps, spec.t_min, spec.t_max))(keys)


def _evaluations(spec: KernelSpec, images, indices, draw_ids, class_ids):
  """The noised images of B images x R draws and the flat, chunked list of (image, class, draw) evaluations.

  Returns (z, x, eps, logsnr) with one row per (image, draw), then `rows` and `labels` [chunks, chunk] (each
  evaluation's row of z and its class; the last chunk is padded) and the number n of real evaluations. Evaluation
  f = (b * C' + c) * R + r is image b, class c, draw r.
  """
  b, r, c = images.shape[0], draw_ids.shape[1], class_ids.shape[1]
  keys, t_all = image_draws(spec, indices)
  t = jnp.take_along_axis(t_all, draw_ids, axis=1)  # [B, R]
  eps = jax.vmap(lambda k, ds: jax.vmap(lambda d: draws.noise(k, d, images.shape[1:]))(ds))(keys, draw_ids)
  logsnr = spec.schedule.logsnr(t)  # [B, R]
  x = jnp.broadcast_to(images[:, None], eps.shape)  # [B, R, H, W, C]
  if spec.symmetries == "flips_rot90":  # the same view of the image for every class of a draw: still paired
    views = jax.vmap(lambda k, ds: draws.symmetries(k, spec.num_draws)[ds])(keys, draw_ids)  # [B, R]
    x = jax.vmap(jax.vmap(draws.apply_symmetry))(x, views)
  x, eps, logsnr = (einops.rearrange(a, "b r ... -> (b r) ...") for a in (x, eps, logsnr))  # one row per (image, draw)
  z = schedules.diffuse(x, eps, logsnr)

  # Flat list of (image, class, draw) evaluations; each refers to its (image, draw) row of z.
  row = (jnp.arange(b)[:, None, None] * r + jnp.arange(r)[None, None, :]) + jnp.zeros((1, c, 1), jnp.int32)
  label = jnp.broadcast_to(class_ids[:, :, None], (b, c, r))
  n = b * c * r
  chunk = min(spec.chunk_size, n)
  padded = -(-n // chunk) * chunk
  row, label = (einops.rearrange(a, "b c r -> (b c r)") for a in (row, label))
  row = jnp.pad(row, (0, padded - n)).reshape(-1, chunk)
  label = jnp.pad(label, (0, padded - n)).reshape(-1, chunk)
  return (z, x, eps, logsnr), row, label, n


def local_errors(model: nn.Module, spec: KernelSpec, params, images, indices, draw_ids, class_ids):
  """Errors of one device's images: images [B,H,W,C], indices [B], draw_ids [B,R], class_ids [B,C'] -> [B,C',R]."""
  b, c = images.shape[0], class_ids.shape[1]
  (z, flat_x, flat_eps, flat_logsnr), row, label, n = _evaluations(spec, images, indices, draw_ids, class_ids)

  def evaluate(args):
    rows, labels = args
    zc, lc = z[rows], flat_logsnr[rows]
    out = model.apply({"params": params}, zc, lc, labels)
    return pair_error(spec.error, out, flat_x[rows], flat_eps[rows], zc, lc, spec.prediction)

  errors = jax.lax.map(evaluate, (row, label)).reshape(-1)[:n]
  return einops.rearrange(errors, "(b c r) -> b c r", b=b, c=c)


def local_pixel_errors(model: nn.Module, spec: KernelSpec, params, images, indices, draw_ids, class_ids):
  """`local_errors` and, from the same evaluations, each class's per-pixel error averaged over the R draws (and
  the channels): (errors [B, C', R], pixel_errors [B, C', H, W]).

  The error-difference map of medfusion.explain is a difference of two classes' pixel errors. The maps are
  accumulated chunk by chunk, so memory grows by B x C' x H x W, not by the number of evaluations.
  """
  b, r, c = images.shape[0], draw_ids.shape[1], class_ids.shape[1]
  (z, flat_x, flat_eps, flat_logsnr), row, label, n = _evaluations(spec, images, indices, draw_ids, class_ids)
  flat = jnp.arange(row.size).reshape(row.shape)
  pair = flat // r  # the (image, class) pair b * C' + c of each evaluation

  def evaluate(total, args):
    rows, labels, pairs, ids = args
    zc, lc = z[rows], flat_logsnr[rows]
    out = model.apply({"params": params}, zc, lc, labels)
    pixels = pixel_error(spec.error, out, flat_x[rows], flat_eps[rows], zc, lc, spec.prediction)
    per_example = jnp.mean(pixels, axis=tuple(range(1, pixels.ndim)))
    valid = (ids < n).astype(pixels.dtype)[:, None, None]
    total = total.at[pairs].add(jnp.mean(pixels, axis=-1) * valid)
    return total, per_example

  zeros = jnp.zeros((b * c, *images.shape[1:3]), jnp.float32)
  total, errors = jax.lax.scan(evaluate, zeros, (row, label, pair, flat))
  errors = einops.rearrange(errors.reshape(-1)[:n], "(b c r) -> b c r", b=b, c=c)
  return errors, einops.rearrange(total / r, "(b c) h w -> b c h w", b=b)


@functools.lru_cache(maxsize=8)
def make_kernel(model: nn.Module, spec: KernelSpec, mesh):
  """jit(shard_map(local_errors)): (params, images, indices, draw_ids, class_ids) -> errors [B, C', R].

  The batch (first) axis of every input is split over `mesh`'s data axis; params are replicated. Cached, so
  classifiers built for the same model, spec and mesh share one compiled kernel.
  """
  data = P(sharding.DATA_AXIS)
  fn = jax.shard_map(
    functools.partial(local_errors, model, spec),
    mesh=mesh,
    in_specs=(P(), data, data, data, data),
    out_specs=data,
    check_vma=False,
  )
  return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def make_pixel_error_kernel(model: nn.Module, spec: KernelSpec, mesh):
  """jit(shard_map(local_pixel_errors)): (params, images, indices, draw_ids, class_ids) -> (errors [B, C', R],
  pixel_errors [B, C', H, W]); sharded as `make_kernel`. Opt-in: only the explanations use it. The maps are of
  the image as it is: draws apply no symmetry here (`spec.symmetries` is ignored)."""
  spec = dataclasses.replace(spec, symmetries="none")
  data = P(sharding.DATA_AXIS)
  fn = jax.shard_map(
    functools.partial(local_pixel_errors, model, spec),
    mesh=mesh,
    in_specs=(P(), data, data, data, data),
    out_specs=(data, data),
    check_vma=False,
  )
  return jax.jit(fn)
