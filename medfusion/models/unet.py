"""A class-conditional UNet denoiser (ADM-style) with a null class for classifier-free guidance."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from medfusion.errors import ConfigError

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of the denoiser, built from `config.model` and `config.data`."""

  num_classes: int  # the null class is index num_classes
  out_channels: int
  channels: int = 64
  channel_mult: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: tuple[int, ...] = (8,)
  dropout: float = 0.1
  norm_groups: int = 16
  image_size: int = 32
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("num_classes", "out_channels", "channels", "num_res_blocks", "norm_groups", "image_size"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"config.model.{name}={getattr(self, name)!r} must be positive")
    if self.dtype not in DTYPES:
      raise ConfigError(f"config.model.dtype={self.dtype!r} is not one of {DTYPES}")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"config.model.dropout={self.dropout!r} must be in [0, 1)")
    levels = len(self.channel_mult)
    if not levels or min(self.channel_mult) < 1:
      raise ConfigError(f"config.model.channel_mult={self.channel_mult} must be one or more positive multipliers")
    if self.image_size % 2 ** (levels - 1):
      raise ConfigError(
        f"config.data.image_size={self.image_size} must be divisible by {2 ** (levels - 1)} for {levels} UNet levels"
      )
    for mult in self.channel_mult:
      if (self.channels * mult) % self.norm_groups:
        raise ConfigError(
          f"config.model.norm_groups={self.norm_groups} must divide every level's width ({self.channels}*{mult})"
        )
    missing = sorted(set(self.attention_resolutions) - set(self.level_sizes))
    if missing:
      raise ConfigError(
        f"config.model.attention_resolutions={self.attention_resolutions}: no UNet level is {missing[0]}x"
        f"{missing[0]} (levels at image_size={self.image_size}: {self.level_sizes})"
      )

  @property
  def level_sizes(self) -> tuple[int, ...]:
    """Height of the feature maps at each level, from the input down."""
    return tuple(self.image_size // 2**level for level in range(len(self.channel_mult)))

  @classmethod
  def from_config(cls, config) -> "UNetConfig":
    m = config.model
    return cls(
      num_classes=config.data.num_classes,
      out_channels=config.data.num_channels,
      channels=m.channels,
      channel_mult=tuple(m.channel_mult),
      num_res_blocks=m.num_res_blocks,
      attention_resolutions=tuple(m.attention_resolutions),
      dropout=m.dropout,
      norm_groups=m.norm_groups,
      image_size=config.data.image_size,
      dtype=m.dtype,
    )


# --- GroupNorm and Conv with a cheaper backward pass on CPU -----------------------------------------------------
# XLA:CPU computes a reduction over leading axes (fused with its elementwise producer) several times slower than a
# matmul with a vector of ones (benchmarks/README.md has the timings). Autodiff of flax's GroupNorm and of every bias
# add is made of such reductions, and they took a large share of the diffusion train step's op time. On CPU, `GroupNorm`
# below has a hand-written backward pass whose sums over positions are batched matmuls, and `Conv` sums its bias
# gradient the same way (and adds the time embedding with the bias, so the ResBlock's embedding gradient costs no second
# pass). The train step got faster (benchmarks/README.md). Both modules hold the same parameters under the same names as
# flax's (checkpoints load unchanged) and compute the same values to float32 rounding; other backends keep flax's
# formulation.


def _fast_cpu_path() -> bool:
  return jax.default_backend() == "cpu"


def _sum_over_positions(x):
  """(B, N, C) -> (B, C): float32 sums over N as a batched matmul with ones."""
  ones = jnp.ones((x.shape[0], 1, x.shape[1]), x.dtype)
  dims = (((2,), (1,)), ((0,), (0,)))
  return lax.dot_general(ones, x, dims, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)[:, 0]


def _per_channel(v, c: int):
  """(B, G) per-group values -> (B, C)."""
  return jnp.repeat(v, c // v.shape[1], axis=1)


@jax.custom_vjp
def _add_channels(y, v):
  """y (B, H, W, C) + v (B, C), broadcast over the positions."""
  return y + v[:, None, None, :]


def _add_channels_fwd(y, v):
  return _add_channels(y, v), None


def _add_channels_bwd(_, g):
  b, h, w, c = g.shape
  return g, _sum_over_positions(g.reshape(b, h * w, c)).astype(g.dtype)


_add_channels.defvjp(_add_channels_fwd, _add_channels_bwd)


def _group_norm_reference(x, scale, bias, groups: int, eps: float):
  """flax.linen.GroupNorm's computation (fast variance, float32 statistics), differentiated by JAX."""
  b, h, w, c = x.shape
  x32 = x.astype(jnp.float32)
  xg = x32.reshape(b, h, w, groups, c // groups)
  mean = jnp.mean(xg, axis=(1, 2, 4))
  var = jnp.maximum(0.0, jnp.mean(jnp.square(xg), axis=(1, 2, 4)) - jnp.square(mean))
  mean_c, var_c = _per_channel(mean, c)[:, None, None, :], _per_channel(var, c)[:, None, None, :]
  return (x32 - mean_c) * (lax.rsqrt(var_c + eps) * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _group_norm(x, scale, bias, groups: int, eps: float):
  """`_group_norm_reference` with its statistics and gradients summed by batched matmuls."""
  return _group_norm_fwd(x, scale, bias, groups, eps)[0]


def _group_norm_fwd(x, scale, bias, groups, eps):
  b, h, w, c = x.shape
  x32 = x.astype(jnp.float32)
  xf = x32.reshape(b, h * w, c)
  n = h * w * (c // groups)
  mean = _sum_over_positions(xf).reshape(b, groups, c // groups).sum(-1) / n
  mean2 = _sum_over_positions(xf * xf).reshape(b, groups, c // groups).sum(-1) / n
  rstd = lax.rsqrt(jnp.maximum(0.0, mean2 - mean * mean) + eps)
  mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)
  y = (x32 - mean_c[:, None, None, :]) * (rstd_c * scale)[:, None, None, :] + bias
  return y, (x, mean, rstd, scale)


def _group_norm_bwd(groups, eps, res, g):
  """With xhat = (x - mean) * rstd and y = xhat * scale + bias: d_bias = sum(g), d_scale = sum(g * xhat) and
  dx = rstd * (g * scale - mean_group(g * scale) - xhat * mean_group(g * scale * xhat)); every sum over positions
  comes from two per-(example, channel) sums, of g and of g * x."""
  del eps
  x, mean, rstd, scale = res
  b, h, w, c = x.shape
  n = h * w * (c // groups)
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  sum_g = _sum_over_positions(g32.reshape(b, h * w, c))
  sum_gx = _sum_over_positions((g32 * x32).reshape(b, h * w, c))
  mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)
  sum_gxhat = rstd_c * (sum_gx - mean_c * sum_g)

  def group_mean(v):
    return _per_channel(v.reshape(b, groups, c // groups).sum(-1) / n, c)

  a = group_mean(scale * sum_g)  # mean of g * scale over the group
  q = group_mean(scale * sum_gxhat)  # mean of g * scale * xhat
  k_g = rstd_c * scale
  k_x = -rstd_c * rstd_c * q
  k_0 = rstd_c * (mean_c * rstd_c * q - a)
  dx = g32 * k_g[:, None, None, :] + x32 * k_x[:, None, None, :] + k_0[:, None, None, :]
  return dx.astype(x.dtype), jnp.sum(sum_gxhat, axis=0), jnp.sum(sum_g, axis=0)


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
  """flax.linen.GroupNorm over the last axis of NHWC inputs (same parameters and initialisers)."""

  num_groups: int
  dtype: jnp.dtype | None = None
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    norm = _group_norm if _fast_cpu_path() else _group_norm_reference
    y = norm(x, scale, bias, self.num_groups, self.epsilon)
    return y.astype(self.dtype or jnp.result_type(x, jnp.float32))


class Conv(nn.Module):
  """flax.linen.Conv with SAME padding on NHWC inputs (same parameters and initialisers); `add` (B, features) is
  added with the bias."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x, add=None):
    kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = lax.conv_general_dilated(x, kernel, self.strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if not _fast_cpu_path():
      y = y + bias
      return y if add is None else y + add[:, None, None, :]
    v = jnp.broadcast_to(bias, (x.shape[0], self.features))
    return _add_channels(y, v if add is None else v + add)


def noise_level_embedding(logsnr, dim: int):
  """Sinusoidal features of the log-SNR (frequencies from 1/8 to ~100 per unit of log-SNR)."""
  half = dim // 2
  freqs = jnp.exp(jnp.linspace(math.log(1 / 8), math.log(100.0), half))
  angles = logsnr[:, None].astype(jnp.float32) * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, with the embedding added in between and a 1x1 skip when widths differ."""

  features: int
  groups: int
  dropout: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.silu(GroupNorm(self.groups, dtype=self.dtype)(x))
    h = Conv(self.features, (3, 3), dtype=self.dtype)(h, add=nn.Dense(self.features, dtype=self.dtype)(emb))
    h = nn.silu(GroupNorm(self.groups, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = Conv(self.features, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1), dtype=self.dtype)(x)
    return x + h


class Attention(nn.Module):
  """Pre-norm multi-head self-attention over the spatial positions, residual, zero-initialised output."""

  groups: int
  dtype: jnp.dtype
  head_dim: int = 32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = GroupNorm(self.groups, dtype=self.dtype)(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(
      num_heads=max(1, c // self.head_dim), dtype=self.dtype, out_kernel_init=nn.initializers.zeros
    )(y)
    return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
  """Predicts eps or v from (z, logsnr, label); label == num_classes is the unconditional (null) class."""

  config: UNetConfig

  @nn.compact
  def __call__(self, z, logsnr, labels, train: bool = False):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    emb_dim = 4 * cfg.channels
    emb = noise_level_embedding(logsnr, cfg.channels)
    emb = nn.Dense(emb_dim, dtype=dtype)(emb)
    emb = emb + nn.Embed(cfg.num_classes + 1, emb_dim, dtype=dtype)(labels)
    emb = nn.Dense(emb_dim, dtype=dtype)(nn.silu(emb))

    def block(h, features):
      return ResBlock(features, cfg.norm_groups, cfg.dropout, dtype)(h, emb, train)

    def maybe_attend(h):
      return Attention(cfg.norm_groups, dtype)(h) if h.shape[1] in cfg.attention_resolutions else h

    h = Conv(cfg.channels, (3, 3), dtype=dtype)(z.astype(dtype))
    skips = [h]
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        h = maybe_attend(block(h, cfg.channels * mult))
        skips.append(h)
      if level < len(cfg.channel_mult) - 1:
        h = Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=dtype)(h)
        skips.append(h)

    h = block(h, h.shape[-1])
    h = Attention(cfg.norm_groups, dtype)(h)
    h = block(h, h.shape[-1])

    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        h = maybe_attend(block(jnp.concatenate([h, skips.pop()], axis=-1), cfg.channels * mult))
      if level > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = Conv(h.shape[-1], (3, 3), dtype=dtype)(h)

    h = nn.silu(GroupNorm(cfg.norm_groups, dtype=dtype)(h))
    out = Conv(cfg.out_channels, (3, 3), dtype=dtype, kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)
