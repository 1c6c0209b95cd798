"""A class-conditional UNet denoiser (ADM-style) with a null class for classifier-free guidance."""

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

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
    h = nn.silu(nn.GroupNorm(self.groups, dtype=self.dtype)(x))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(h)
    h = h + nn.Dense(self.features, dtype=self.dtype)(emb)[:, None, None, :]
    h = nn.silu(nn.GroupNorm(self.groups, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), dtype=self.dtype)(x)
    return x + h


class Attention(nn.Module):
  """Pre-norm multi-head self-attention over the spatial positions, residual, zero-initialised output."""

  groups: int
  dtype: jnp.dtype
  head_dim: int = 32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = nn.GroupNorm(self.groups, dtype=self.dtype)(x).reshape(b, h * w, c)
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

    h = nn.Conv(cfg.channels, (3, 3), dtype=dtype)(z.astype(dtype))
    skips = [h]
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        h = maybe_attend(block(h, cfg.channels * mult))
        skips.append(h)
      if level < len(cfg.channel_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=dtype)(h)
        skips.append(h)

    h = block(h, h.shape[-1])
    h = Attention(cfg.norm_groups, dtype)(h)
    h = block(h, h.shape[-1])

    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        h = maybe_attend(block(jnp.concatenate([h, skips.pop()], axis=-1), cfg.channels * mult))
      if level > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.Conv(h.shape[-1], (3, 3), dtype=dtype)(h)

    h = nn.silu(nn.GroupNorm(cfg.norm_groups, dtype=dtype)(h))
    out = nn.Conv(cfg.out_channels, (3, 3), dtype=dtype, kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)
