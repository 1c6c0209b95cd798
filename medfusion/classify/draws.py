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


SYMMETRIES = ("none", "flips_rot90")


def symmetries(key, num_draws: int):
  """Index in [0, 8) of the symmetry of the square each of draws 0..K-1 applies to the image (the same for every
  class, so comparisons stay paired): a per-image random order of all 8 in every 8 consecutive draws, so any
  prefix of the draws is balanced over them, as stratified timesteps are over t."""
  blocks = -(-num_draws // 8)
  keys = jax.random.split(jax.random.fold_in(key, 2), blocks)
  return jax.vmap(lambda k: jax.random.permutation(k, 8))(keys).reshape(-1)[:num_draws]


def apply_symmetry(image, index, inverse: bool = False):
  """One of the 8 symmetries of the square on image [H, W, C] (H = W): index = 4 * flip + quarter turns; the
  left-right flip comes first. `inverse` undoes it (maps computed on the transformed image back onto the image)."""
  turns = index % 4
  flip = index >= 4
  rotations = [lambda a, k=k: jnp.rot90(a, k, axes=(0, 1)) for k in range(4)]
  if inverse:
    image = jax.lax.switch((4 - turns) % 4, rotations, image)
    return jnp.where(flip, image[:, ::-1], image)
  image = jnp.where(flip, image[:, ::-1], image)
  return jax.lax.switch(turns, rotations, image)
