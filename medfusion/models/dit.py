"""A class-conditional Diffusion Transformer (DiT, Peebles & Xie 2023) with adaLN-Zero conditioning.

The image is cut into p x p patches, each a token with a fixed 2-D sin-cos position embedding. The conditioning
c = embed(log-SNR) + embed(label) (label num_classes is the null class for classifier-free guidance) sets the
shift, scale and gate of every block's layer norms and residual branches; the gates and the output layer start
at zero, so every block starts as the identity and the network's first prediction is 0.
"""

import dataclasses

import einops
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from medfusion.errors import ConfigError
from medfusion.models.unet import DTYPES, noise_level_embedding

FREQUENCY_DIM = 256  # sinusoidal features of the log-SNR fed to the conditioning MLP (DiT's)
xavier = nn.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Architecture of the DiT, built from `config.model` and `config.data`."""

  num_classes: int  # the null class is index num_classes
  out_channels: int
  image_size: int
  patch_size: int = 4
  depth: int = 12
  hidden_size: int = 768
  num_heads: int = 12
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("num_classes", "out_channels", "image_size", "patch_size", "depth", "hidden_size", "num_heads"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"config.model.{name}={getattr(self, name)!r} must be positive")
    if not self.mlp_ratio > 0:
      raise ConfigError(f"config.model.mlp_ratio={self.mlp_ratio!r} must be positive")
    if self.dtype not in DTYPES:
      raise ConfigError(f"config.model.dtype={self.dtype!r} is not one of {DTYPES}")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"config.model.dropout={self.dropout!r} must be in [0, 1)")
    if self.image_size % self.patch_size:
      raise ConfigError(
        f"config.model.patch_size={self.patch_size} must divide config.data.image_size={self.image_size}"
      )
    if self.hidden_size % self.num_heads:
      raise ConfigError(
        f"config.model.hidden_size={self.hidden_size} must be divisible by config.model.num_heads={self.num_heads}"
      )
    if self.hidden_size % 4:
      raise ConfigError(
        f"config.model.hidden_size={self.hidden_size} must be divisible by 4 (the 2-D sin-cos position embedding)"
      )

  @property
  def grid_size(self) -> int:
    """Patches along each side of the image."""
    return self.image_size // self.patch_size

  @classmethod
  def from_config(cls, config) -> "DiTConfig":
    m = config.model
    return cls(
      num_classes=config.data.num_classes,
      out_channels=config.data.num_channels,
      image_size=config.data.image_size,
      patch_size=m.patch_size,
      depth=m.depth,
      hidden_size=m.hidden_size,
      num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio,
      dropout=m.dropout,
      dtype=m.dtype,
    )


def sincos_position_embedding(grid_size: int, dim: int) -> np.ndarray:
  """Fixed [grid_size**2, dim] embedding of the patch grid, rows then columns: half the features code the row."""
  omega = 1.0 / 10000.0 ** (np.arange(dim // 4) / (dim // 4))
  rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

  def embed(positions):
    angles = positions.reshape(-1, 1) * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([embed(rows), embed(cols)], axis=1).astype(np.float32)


def layer_norm(x, dtype):
  """LayerNorm without learned scale and bias: adaLN supplies them."""
  return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype)(x)


def modulate(x, shift, scale):
  """Per-example shift and scale of every token's features."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
  """Attention and MLP, each pre-normed, modulated by c (shift, scale) and gated by c (zero at init)."""

  num_heads: int
  mlp_ratio: float
  dropout: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, c, train: bool):
    width = x.shape[-1]
    modulation = nn.Dense(6 * width, dtype=self.dtype, kernel_init=nn.initializers.zeros)(nn.silu(c))
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = jnp.split(modulation, 6, axis=-1)
    h = modulate(layer_norm(x, self.dtype), shift_attn, scale_attn)
    h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype, kernel_init=xavier)(h)
    x = x + gate_attn[:, None, :] * nn.Dropout(self.dropout, deterministic=not train)(h)
    h = modulate(layer_norm(x, self.dtype), shift_mlp, scale_mlp)
    h = nn.gelu(nn.Dense(int(width * self.mlp_ratio), dtype=self.dtype, kernel_init=xavier)(h), approximate=True)
    h = nn.Dense(width, dtype=self.dtype, kernel_init=xavier)(h)
    return x + gate_mlp[:, None, :] * nn.Dropout(self.dropout, deterministic=not train)(h)


class DiT(nn.Module):
  """Predicts eps or v from (z, logsnr, label); label == num_classes is the unconditional (null) class."""

  config: DiTConfig

  @nn.compact
  def __call__(self, z, logsnr, labels, train: bool = False):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    g, p = cfg.grid_size, cfg.patch_size
    embed_init = nn.initializers.normal(0.02)

    # Patchify: each p x p patch, in raster order over the g x g grid, is one token.
    tokens = einops.rearrange(z.astype(dtype), "b (gh ph) (gw pw) c -> b (gh gw) (ph pw c)", ph=p, pw=p)
    x = nn.Dense(cfg.hidden_size, dtype=dtype, kernel_init=xavier)(tokens)
    x = x + jnp.asarray(sincos_position_embedding(g, cfg.hidden_size), dtype)

    c = noise_level_embedding(logsnr, FREQUENCY_DIM)
    c = nn.Dense(cfg.hidden_size, dtype=dtype, kernel_init=embed_init)(c)
    c = nn.Dense(cfg.hidden_size, dtype=dtype, kernel_init=embed_init)(nn.silu(c))
    c = c + nn.Embed(cfg.num_classes + 1, cfg.hidden_size, dtype=dtype, embedding_init=embed_init)(labels)

    for _ in range(cfg.depth):
      x = DiTBlock(cfg.num_heads, cfg.mlp_ratio, cfg.dropout, dtype)(x, c, train)

    modulation = nn.Dense(2 * cfg.hidden_size, dtype=dtype, kernel_init=nn.initializers.zeros)(nn.silu(c))
    shift, scale = jnp.split(modulation, 2, axis=-1)
    x = modulate(layer_norm(x, dtype), shift, scale)
    x = nn.Dense(p * p * cfg.out_channels, dtype=dtype, kernel_init=nn.initializers.zeros)(x)
    out = einops.rearrange(x, "b (gh gw) (ph pw c) -> b (gh ph) (gw pw) c", gh=g, ph=p, pw=p)
    return out.astype(jnp.float32)
