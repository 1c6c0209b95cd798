"""The (timestep, noise) draws of each image: a fixed sequence derived from the seed and the image index.

Draw k of image i is the same whatever the batch size, device count, order or number of draws evaluated so
far, and all classes see the same draws, so class comparisons are paired.
"""

import jax
import jax.numpy as jnp

TIMESTEPS = ("stratified", "uniform")


def image_key(seed: int, index):
  """The key of one image (by its index in the split)."""
  return jax.random.fold_in(jax.random.key(seed), index)


def timesteps(key, num_draws: int, kind: str, t_min: float, t_max: float):
  """t of draws 0..K-1 for one image.

  stratified: the K evenly spaced quantiles (k + 1/2) / K of [t_min, t_max] (Li et al. 2023), visited in a
  per-image random order so that any prefix of the sequence (adaptive rounds) is spread over [t_min, t_max].
  uniform: independent uniform draws.
  """
  key = jax.random.fold_in(key, 0)
  if kind == "stratified":
    grid = (jnp.arange(num_draws) + 0.5) / num_draws
    u = jax.random.permutation(key, grid)
  elif kind == "uniform":
    u = jax.random.uniform(key, (num_draws,))
  else:
    raise ValueError(f"timesteps='{kind}' is not one of {TIMESTEPS}")
  return t_min + u * (t_max - t_min)


def noise(key, draw, shape):
  """eps of one draw of one image."""
  return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 1), draw), shape)
