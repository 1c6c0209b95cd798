"""ResNet-18 (He et al. 2016), the discriminative baseline; a 3x3 stride-1 stem without max-pool for small images."""

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from medfusion.errors import ConfigError
from medfusion.models.unet import DTYPES

STAGE_SIZES = {"resnet18": (2, 2, 2, 2)}  # BasicBlocks per stage; stage k has width * 2**k channels
SMALL_IMAGE_SIZE = 64  # at or below this size the stem keeps full resolution (the CIFAR adaptation)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Architecture of the classifier, built from `config.model` and `config.data`."""

  num_classes: int
  width: int = 64
  stage_sizes: tuple[int, ...] = STAGE_SIZES["resnet18"]
  image_size: int = 32
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("num_classes", "width", "image_size"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"config.model.{name}={getattr(self, name)!r} must be positive")
    if self.dtype not in DTYPES:
      raise ConfigError(f"config.model.dtype={self.dtype!r} is not one of {DTYPES}")

  @classmethod
  def from_config(cls, config) -> "ResNetConfig":
    m = config.model
    if m.type not in STAGE_SIZES:
      raise ConfigError(f"config.model.type={m.type!r} is not one of {tuple(STAGE_SIZES)}")
    return cls(
      num_classes=config.data.num_classes,
      width=m.width,
      stage_sizes=STAGE_SIZES[m.type],
      image_size=config.data.image_size,
      dtype=m.dtype,
    )


def _conv(features: int, size: int, strides: int, dtype) -> nn.Conv:
  """A bias-free convolution with symmetric padding (size // 2 each side, as in the reference ResNet)."""
  pad = size // 2
  return nn.Conv(features, (size, size), (strides, strides), ((pad, pad), (pad, pad)), use_bias=False, dtype=dtype)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers with ReLU and a residual; a 1x1 conv-BN shortcut when the shape changes."""

  features: int
  strides: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype)
    y = nn.relu(norm()(_conv(self.features, 3, self.strides, self.dtype)(x)))
    y = norm()(_conv(self.features, 3, 1, self.dtype)(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = norm()(_conv(self.features, 1, self.strides, self.dtype)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Maps images [B, S, S, C] in [-1, 1] to float32 logits [B, num_classes]."""

  config: ResNetConfig

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=dtype)
    x = x.astype(dtype)
    if cfg.image_size <= SMALL_IMAGE_SIZE:
      x = nn.relu(norm()(_conv(cfg.width, 3, 1, dtype)(x)))
    else:
      x = nn.relu(norm()(_conv(cfg.width, 7, 2, dtype)(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    for stage, blocks in enumerate(cfg.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(cfg.width * 2**stage, strides, dtype)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(cfg.num_classes, dtype=dtype)(x).astype(jnp.float32)
