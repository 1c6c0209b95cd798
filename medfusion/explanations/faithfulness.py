"""Faithfulness without masks: deletion and insertion curves (Petsiuk et al. 2018, RISE), numpy only.

A map ranks the pixels. Deletion replaces the pixels it ranks highest, a fraction j / steps at step j, by a blurred
copy of the image (`removed`) and follows a classifier's probability of a class: a map that finds the evidence
makes it fall fast (low area under the curve). Insertion starts from the blurred copy and puts the image's pixels
back in the same order: a faithful map makes it rise fast (high area). A blur is the removal, not a constant, so
the edited images stay close to the data (a black square is evidence of its own). Both are compared with the same
curves for random pixel orders (`maps.random_map`): a map below (deletion) or above (insertion) that reference
ranks pixels better than chance.
"""

from collections.abc import Callable

import numpy as np
from scipy import ndimage

REMOVAL_SIGMA = 4.0  # pixels: removes structure a few pixels across (lesions), keeps the anatomy's layout
MODES = ("deletion", "insertion")

Probability = Callable[[np.ndarray], np.ndarray]  # images [M, H, W, C] -> probabilities [M, C]


def removed(images, sigma: float = REMOVAL_SIGMA) -> np.ndarray:
  """What deleted pixels become: each image [N, H, W, C] blurred by a Gaussian of `sigma` pixels (per channel)."""
  images = np.asarray(images, np.float32)
  return ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="nearest").astype(np.float32)


def pixel_order(saliency, seed: int = 0) -> np.ndarray:
  """Flat pixel positions, highest map value first; ties (e.g. the zeros of a rectified map) in a seeded random
  order, so a flat map ranks like a random one rather than by position."""
  saliency = np.asarray(saliency, np.float64).reshape(-1)
  tie_break = np.random.default_rng(seed).random(saliency.size)
  return np.lexsort((tie_break, -saliency))


def path(image, blurred, order, steps: int, mode: str) -> np.ndarray:
  """The steps + 1 images [steps + 1, H, W, C] of one curve: fraction j / steps of the pixels in `order` deleted
  (replaced by `blurred`) or inserted (taken from `image` into `blurred`)."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {MODES}")
  h, w = image.shape[:2]
  counts = np.round(np.arange(steps + 1) / steps * h * w).astype(int)
  rank = np.empty(h * w, int)
  rank[order] = np.arange(h * w)
  chosen = (rank[None, :] < counts[:, None]).reshape(steps + 1, h, w, 1)  # [steps + 1, H, W, 1]
  start, end = (image, blurred) if mode == "deletion" else (blurred, image)
  return np.where(chosen, end[None], start[None]).astype(np.float32)


def curves(probability: Probability, images, saliencies, classes, steps: int, mode: str, seed: int = 0) -> np.ndarray:
  """Probability of class classes[i] along each image's curve: [N, steps + 1], one `probability` call for all."""
  images = np.asarray(images, np.float32)
  blurred = removed(images)
  edited = np.concatenate(
    [path(images[i], blurred[i], pixel_order(saliencies[i], seed + i), steps, mode) for i in range(len(images))]
  )
  probs = np.asarray(probability(edited)).reshape(len(images), steps + 1, -1)
  return probs[np.arange(len(images)), :, np.asarray(classes)]


def area(curve) -> np.ndarray:
  """Area under curves [..., steps + 1] over the fraction [0, 1] of pixels (trapezoids)."""
  curve = np.asarray(curve, np.float64)
  return (curve[..., 1:] + curve[..., :-1]).sum(axis=-1) / (2 * (curve.shape[-1] - 1))
