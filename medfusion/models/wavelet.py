"""A one-level orthonormal 2-D Haar transform, and a wrapper that runs any denoiser in that wavelet space.

The transform W maps each 2x2 block of pixels to four sub-band coefficients (LL, LH, HL, HH) with an orthonormal
4x4 matrix, so [B, H, W, C] -> [B, H/2, W/2, 4C] and back exactly. Because W is linear and orthonormal,
diffusing in pixel space and then transforming is diffusing in wavelet space: W(alpha x + sigma eps) =
alpha W(x) + sigma W(eps), and W(eps) is again standard normal. The wrapper therefore takes and returns
pixel-space arrays, and training, the error kernel and sampling need no change. W also preserves norms (and the
number of elements), so the mean-square errors of eps, x or v are the same in either space; L1 errors are not.
"""

import flax.linen as nn
import jax.numpy as jnp


def _butterfly(a, b, c, d):
  """The orthonormal 4-point Haar (Hadamard) matrix applied to four arrays; it is its own inverse."""
  return (a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def haar(x):
  """One-level Haar transform: [B, H, W, C] -> [B, H/2, W/2, 4C], sub-bands LL, LH, HL, HH along channels."""
  b, h, w, c = x.shape
  blocks = x.reshape(b, h // 2, 2, w // 2, 2, c)
  corners = (blocks[:, :, 0, :, 0], blocks[:, :, 0, :, 1], blocks[:, :, 1, :, 0], blocks[:, :, 1, :, 1])
  return jnp.concatenate(_butterfly(*corners), axis=-1)


def inverse_haar(y):
  """The exact inverse of `haar`: [B, H/2, W/2, 4C] -> [B, H, W, C]."""
  b, h, w, c4 = y.shape
  top_left, top_right, bottom_left, bottom_right = _butterfly(*jnp.split(y, 4, axis=-1))
  top = jnp.stack([top_left, top_right], axis=3)  # [B, H/2, W/2, 2, C]
  bottom = jnp.stack([bottom_left, bottom_right], axis=3)
  return jnp.stack([top, bottom], axis=2).reshape(b, 2 * h, 2 * w, c4 // 4)


class WaveletDenoiser(nn.Module):
  """Runs `inner` (built for half the image size and 4x the channels) on haar(z); returns its output in pixels."""

  inner: nn.Module

  def __call__(self, z, logsnr, labels, train: bool = False):
    return inverse_haar(self.inner(haar(z), logsnr, labels, train=train))
