"""Sampling from the class-conditional denoiser: deterministic DDIM (eta = 0), ancestral DDPM and DDIM inversion,
with classifier-free guidance through the null class.

The math is pure functions of arrays on the log-SNR schedule of `medfusion.diffusion.schedules` (continuous time t in
[0, 1], z_t = alpha_t x + sigma_t eps): a step maps z at time t to z at an earlier time s (or, inverting, a later
one), and a fixed number of steps on the even grid t_i = t_start * i / n runs in one `lax.scan`. `make_program`
wraps them as jitted functions sharded like the error kernel (examples over the mesh's `data` axis, parameters
replicated); `Sampler` batches numpy arrays through them.

Guidance follows Ho & Salimans (2022): output = (1 + w) * conditional - w * unconditional, so w = 0 is the
conditional model alone (diffusers' `guidance_scale` is 1 + w). Denoising clips the predicted x to [-1, 1] (as ADM's
`clip_denoised`); inversion does not.

Randomness: example i (a sample number, or an image's index in its split) has the key
fold_in(fold_in(key(config.seed), stream), i); its starting noise is drawn from fold_in(key, 0) and the noise of
DDPM step j from fold_in(fold_in(key, 1), j). Results therefore do not depend on batch size or device count, and
every target class of one image sees the same noise (paired counterfactuals).
"""

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from medfusion import sharding
from medfusion.diffusion import schedules
from medfusion.errors import ConfigError
from medfusion.models import make_denoiser
from medfusion.models.unet import DTYPES

SAMPLERS = ("ddim", "ddpm")
PROGRAMS = ("sample", "partial_noising", "invert", "denoise")
# Key streams, far from any image index (the classifier's draws use fold_in(key(seed), index)).
SAMPLE_STREAM = 2**31 - 2  # medfusion.sample: example i is sample number i
IMAGE_STREAM = 2**31 - 3  # counterfactuals: example i is the image with index i in its split

ApplyFn = Callable  # (z, logsnr, labels) -> the model's eps or v prediction


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """What fixes a compiled sampler besides array shapes, from `config.explain` and `config.diffusion`."""

  seed: int
  steps: int  # denoising steps over the whole [0, 1]
  guidance: float  # w
  sampler: str  # ddim | ddpm
  dtype: str
  batch_size: int  # examples per call, padded
  prediction: str
  schedule: schedules.Schedule
  null_class: int  # = data.num_classes

  def __post_init__(self):
    for name in ("steps", "batch_size"):
      if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
        raise ConfigError(f"config.explain.{name}={getattr(self, name)!r} must be a positive integer")
    if not self.guidance >= 0.0:
      raise ConfigError(f"config.explain.guidance={self.guidance!r} must be >= 0")
    if self.sampler not in SAMPLERS:
      raise ConfigError(f"config.explain.sampler={self.sampler!r} is not one of {SAMPLERS}")
    if self.dtype not in DTYPES:
      raise ConfigError(f"config.explain.dtype={self.dtype!r} is not one of {DTYPES}")
    if self.prediction not in schedules.PREDICTIONS:
      raise ConfigError(f"config.diffusion.prediction={self.prediction!r} is not one of {schedules.PREDICTIONS}")

  @classmethod
  def from_config(cls, config) -> "SamplerSpec":
    e = config.explain
    return cls(
      config.seed,
      e.steps,
      float(e.guidance),
      e.sampler,
      e.dtype,
      e.batch_size,
      config.diffusion.prediction,
      schedules.Schedule.from_config(config.diffusion, config.data.image_size),
      config.data.num_classes,
    )


def num_steps(t: float, steps: int) -> int:
  """Steps of a run from time t down to 0 at the step size of `steps` steps over [0, 1] (at least 1)."""
  return max(1, round(t * steps))


def example_keys(seed: int, stream: int, indices):
  """The key of each example: fold_in(fold_in(key(seed), stream), index)."""
  base = jax.random.fold_in(jax.random.key(seed), stream)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)


def initial_noise(keys, shape):
  """Each example's starting noise [B, *shape] (pure noise for sampling, the eps of partial noising)."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)


def step_noise(keys, step, shape):
  """Each example's noise of DDPM step `step`."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(jax.random.fold_in(k, 1), step), shape))(keys)


def guided_output(apply_fn: ApplyFn, z, logsnr, labels, guidance: float, null_class: int):
  """(1 + w) * model(z, labels) - w * model(z, null): one call on the doubled batch; w = 0 is one plain call."""
  if guidance == 0.0:
    return apply_fn(z, logsnr, labels).astype(jnp.float32)
  both = apply_fn(
    jnp.concatenate([z, z]),
    jnp.concatenate([logsnr, logsnr]),
    jnp.concatenate([labels, jnp.full_like(labels, null_class)]),
  ).astype(jnp.float32)
  cond, uncond = jnp.split(both, 2)
  return (1.0 + guidance) * cond - guidance * uncond


def predict_x_eps(output, z, logsnr, prediction: str, clip: bool):
  """(x_hat, eps_hat) of a model output; with `clip`, x_hat is clipped to [-1, 1] and eps_hat made consistent with
  it where the clip changed x_hat."""
  eps_hat, x_hat, _ = schedules.predict_eps_x_v(output, z, logsnr, prediction)
  if clip:
    clipped = jnp.clip(x_hat, -1.0, 1.0)
    eps_hat = jnp.where(clipped == x_hat, eps_hat, schedules.eps_from_z_x(z, clipped, logsnr))
    x_hat = clipped
  return x_hat, eps_hat


def ddim_step(x_hat, eps_hat, logsnr_s):
  """Deterministic DDIM (eta = 0): z_s = alpha_s x_hat + sigma_s eps_hat. The same map moves up in time (inversion)."""
  return schedules.diffuse(x_hat, eps_hat, logsnr_s)


def ddpm_step(z, x_hat, logsnr_t, logsnr_s, noise):
  """Ancestral step t -> s < t: a draw from q(z_s | z_t, x = x_hat) (Kingma et al. 2021, VDM).

  With c = 1 - SNR(t) / SNR(s): mean = alpha_s ((1 - c) z_t / alpha_t + c x_hat), variance = c sigma_s^2.
  """
  alpha_t, _ = schedules.alpha_sigma(logsnr_t)
  alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
  c = -jnp.expm1(logsnr_t - logsnr_s)
  bc = functools.partial(jnp.reshape, shape=(-1,) + (1,) * (z.ndim - 1))
  mean = bc(alpha_s) * (z * bc((1.0 - c) / alpha_t) + bc(c) * x_hat)
  return mean + bc(sigma_s * jnp.sqrt(c)) * noise


def denoise(apply_fn: ApplyFn, spec: SamplerSpec, z, labels, keys, t_start: float, steps: int, kind: str, guidance):
  """Runs z at time t_start down to t = 0 in `steps` steps of `kind` (ddim | ddpm) under `labels` with guidance w;
  returns z_0 (the image, clipped to [-1, 1])."""
  if kind not in SAMPLERS:
    raise ValueError(f"sampler='{kind}' is not one of {SAMPLERS}")
  grid = jnp.linspace(0.0, t_start, steps + 1)
  batch = z.shape[0]

  def body(z, i):  # from t_i to t_{i-1}, i = steps .. 1
    logsnr_t = jnp.full((batch,), spec.schedule.logsnr(grid[i]))
    logsnr_s = jnp.full((batch,), spec.schedule.logsnr(grid[i - 1]))
    output = guided_output(apply_fn, z, logsnr_t, labels, guidance, spec.null_class)
    x_hat, eps_hat = predict_x_eps(output, z, logsnr_t, spec.prediction, clip=True)
    if kind == "ddim":
      return ddim_step(x_hat, eps_hat, logsnr_s), None
    noise = step_noise(keys, i, z.shape[1:]) * (i > 1)  # no noise added on the last step
    return ddpm_step(z, x_hat, logsnr_t, logsnr_s, noise), None

  z, _ = jax.lax.scan(body, z.astype(jnp.float32), jnp.arange(steps, 0, -1))
  return jnp.clip(z, -1.0, 1.0)


def ddim_invert(apply_fn: ApplyFn, spec: SamplerSpec, x, labels, t_end: float, steps: int):
  """DDIM run backwards: from z_0 = x up to time t_end in `steps` steps, each evaluating the model (no guidance)
  at the lower end of the step; returns z_{t_end}, which `denoise` with kind ddim maps back to about x."""
  grid = jnp.linspace(0.0, t_end, steps + 1)
  batch = x.shape[0]

  def body(z, i):  # from t_i to t_{i+1}
    logsnr_t = jnp.full((batch,), spec.schedule.logsnr(grid[i]))
    logsnr_next = jnp.full((batch,), spec.schedule.logsnr(grid[i + 1]))
    output = apply_fn(z, logsnr_t, labels).astype(jnp.float32)
    x_hat, eps_hat = predict_x_eps(output, z, logsnr_t, spec.prediction, clip=False)
    return ddim_step(x_hat, eps_hat, logsnr_next), None

  z, _ = jax.lax.scan(body, x.astype(jnp.float32), jnp.arange(steps))
  return z


def sample(apply_fn: ApplyFn, spec: SamplerSpec, labels, keys, shape):
  """Images [B, *shape] of classes `labels` from pure noise, with the spec's sampler, steps and guidance."""
  z = initial_noise(keys, shape)
  return denoise(apply_fn, spec, z, labels, keys, 1.0, spec.steps, spec.sampler, spec.guidance)


def partial_noising(apply_fn: ApplyFn, spec: SamplerSpec, x, labels, keys, t_star: float):
  """x noised to t_star with each example's noise, then denoised under `labels` with the spec's sampler and guidance
  (SDEdit; the counterfactuals of Favero et al. 2025)."""
  logsnr = jnp.full((x.shape[0],), spec.schedule.logsnr(t_star))
  z = schedules.diffuse(x, initial_noise(keys, x.shape[1:]), logsnr)
  return denoise(apply_fn, spec, z, labels, keys, t_star, num_steps(t_star, spec.steps), spec.sampler, spec.guidance)


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled sampler program: `name` in PROGRAMS, the time t it starts or ends at, and the key stream.

  sample: (labels) -> images from noise; partial_noising: (x, labels) -> x noised to t and denoised;
  invert: (x, labels) -> z_t by DDIM inversion (no guidance); denoise: (z_t, labels) -> DDIM with guidance to t = 0.
  """

  name: str
  t: float = 1.0
  stream: int = IMAGE_STREAM


@functools.lru_cache(maxsize=16)
def make_program(model: nn.Module, spec: SamplerSpec, mesh, program: Program, image_shape: tuple[int, ...]):
  """jit(shard_map(program)): (params, x_or_z, labels, indices) -> [B, *image_shape], examples split over `mesh`'s
  data axis (x_or_z is ignored by `sample`). Cached per model, spec, mesh and program."""
  if program.name not in PROGRAMS:
    raise ValueError(f"program '{program.name}' is not one of {PROGRAMS}")

  def local(params, x, labels, indices):
    def apply_fn(z, logsnr, labels):
      return model.apply({"params": params}, z, logsnr, labels)

    keys = example_keys(spec.seed, program.stream, indices)
    steps = num_steps(program.t, spec.steps)
    if program.name == "sample":
      return sample(apply_fn, spec, labels, keys, image_shape)
    if program.name == "partial_noising":
      return partial_noising(apply_fn, spec, x, labels, keys, program.t)
    if program.name == "invert":
      return ddim_invert(apply_fn, spec, x, labels, program.t, steps)
    return denoise(apply_fn, spec, x, labels, keys, program.t, steps, "ddim", spec.guidance)

  data = P(sharding.DATA_AXIS)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), data, data, data), out_specs=data, check_vma=False)
  return jax.jit(fn)


class Sampler:
  """Runs sampler programs on numpy arrays in batches of `config.explain.batch_size` (padded, so nothing
  recompiles) with the model's EMA `params`."""

  def __init__(self, config, params, mesh=None):
    self.spec = SamplerSpec.from_config(config)
    self.mesh = mesh or sharding.make_mesh()
    sharding.check_batch_size(self.spec.batch_size, "config.explain.batch_size")
    self.model = make_denoiser(config, self.spec.dtype, 0.0)
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    self.params = jax.device_put(params, sharding.replicated(self.mesh))

  def run(self, program: Program, x, labels, indices, progress=None) -> np.ndarray:
    """`program` on examples (x [N, H, W, C] or None, labels [N], indices [N]) -> float32 [N, H, W, C].

    `progress(n)` is called after each batch with the number of examples it finished.
    """
    labels, indices = np.asarray(labels, np.int32), np.asarray(indices, np.int32)
    x = np.zeros((len(labels), *self.image_shape), np.float32) if x is None else np.asarray(x, np.float32)
    fn = make_program(self.model, self.spec, self.mesh, program, self.image_shape)
    b, out = self.spec.batch_size, []
    for lo in range(0, len(labels), b):
      rows = slice(lo, lo + b)
      n = len(labels[rows])
      batch = {k: _pad(a[rows], b) for k, a in (("x", x), ("labels", labels), ("indices", indices))}
      g = sharding.shared_to_global(self.mesh, batch)
      result = fn(self.params, g["x"], g["labels"], g["indices"])
      out.append(np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(result, tiled=True)))[:n])
      if progress is not None:
        progress(n)
    return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.float32)

  def sample(self, labels, indices, progress=None) -> np.ndarray:
    """Images of classes `labels` from the noise of sample numbers `indices` (config.explain.sampler)."""
    return self.run(Program("sample", 1.0, SAMPLE_STREAM), None, labels, indices, progress)


def _pad(a: np.ndarray, b: int) -> np.ndarray:
  """`a` padded to b rows by repeating its last row (results of padding rows are discarded)."""
  return np.concatenate([a, np.repeat(a[-1:], b - len(a), axis=0)]) if len(a) < b else a
