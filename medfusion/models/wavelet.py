"""A one-level orthonormal 2-D Haar transform, and a wrapper that runs any denoiser in that wavelet space.

The transform W maps each 2x2 block of pixels to four sub-band coefficients (LL, LH, HL, HH) with an orthonormal
4x4 matrix, so [B, H, W, C] -> [B, H/2, W/2, 4C] and back exactly. Because W is linear and orthonormal,
diffusing in pixel space and then transforming is diffusing in wavelet space: W(alpha x + sigma eps) =
alpha W(x) + sigma W(eps), and W(eps) is again standard normal. The wrapper therefore takes and returns
pixel-space arrays, and training, the error kernel and sampling need no change. W also preserves norms (and the
number of elements), so the mean-square errors of eps, x or v are the same in either space; L1 errors are not.
"""

import einops
import flax.linen as nn
import jax.numpy as jnp


def _butterfly(a, b, c, d):
  """The orthonormal 4-point Haar (Hadamard) matrix applied to four arrays; it is its own inverse."""
  return (a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def haar(x):
  """One-level Haar transform: [B, H, W, C] -> [B, H/2, W/2, 4C], sub-bands LL, LH, HL, HH along channels."""
  # The four pixels of each 2x2 block, top-left, top-right, bottom-left, bottom-right.
  corners = einops.rearrange(x, "b (h i) (w j) c -> (i j) b h w c", i=2, j=2)
  return jnp.concatenate(_butterfly(*corners), axis=-1)


def inverse_haar(y):
  """The exact inverse of `haar`: [B, H/2, W/2, 4C] -> [B, H, W, C]."""
  corners = jnp.stack(_butterfly(*jnp.split(y, 4, axis=-1)))  # [4, B, H/2, W/2, C]: TL, TR, BL, BR
  return einops.rearrange(corners, "(i j) b h w c -> b (h i) (w j) c", i=2, j=2)


class WaveletDenoiser(nn.Module):
  """Runs `inner` (built for half the image size and 4x the channels) on haar(z); returns its output in pixels."""

  inner: nn.Module

  def __call__(self, z, logsnr, labels, train: bool = False):
    return inverse_haar(self.inner(haar(z), logsnr, labels, train=train))
