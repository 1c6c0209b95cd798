"""The diffusion classifier: runs the error kernel over images, full budget or adaptively, and tallies.

Every image has a fixed sequence of K draws (`draws.py`). Full budget evaluates all K for all classes.
Adaptive modes evaluate `draws_per_round` draws at a time and take decided images out of the batch; the
remaining ones are repacked with waiting images into batches of the same fixed shape, so nothing recompiles.
"""

import collections
import dataclasses

import jax
import numpy as np

from medfusion import sharding
from medfusion.classify import aggregate, kernel
from medfusion.models.unet import UNet, UNetConfig


@dataclasses.dataclass
class Tally:
  """Per-image running totals over the draws evaluated so far (numpy, on the host)."""

  votes: np.ndarray  # [N, C] int
  error_sum: np.ndarray  # [N, C] float64
  error_count: np.ndarray  # [N, C] int: draws evaluated per class
  draws: np.ndarray  # [N] int: draws evaluated per image
  nfe: np.ndarray  # [N] int: network evaluations per image

  @classmethod
  def zeros(cls, n: int, c: int) -> "Tally":
    return cls(np.zeros((n, c), int), np.zeros((n, c)), np.zeros((n, c), int), np.zeros(n, int), np.zeros(n, int))

  def add(self, rows, errors, class_ids) -> None:
    """Adds errors [b, C', R] of images `rows` evaluated on `class_ids` [b, C']."""
    num_classes = self.votes.shape[1]
    full = np.full((len(rows), num_classes, errors.shape[2]), np.inf)
    np.put_along_axis(full, class_ids[:, :, None], errors, axis=1)
    evaluated = np.isfinite(full[:, :, 0])
    self.votes[rows] += aggregate.votes_from_errors(full, evaluated)
    self.error_sum[rows] += np.where(evaluated[:, :, None], full, 0.0).sum(axis=2)
    self.error_count[rows] += evaluated * errors.shape[2]
    self.draws[rows] += errors.shape[2]
    self.nfe[rows] += errors.shape[1] * errors.shape[2]

  @property
  def mean_errors(self) -> np.ndarray:
    """Mean error per class; +inf for classes never evaluated (pruned)."""
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(self.error_count > 0, self.error_sum / np.maximum(self.error_count, 1), np.inf)


class DiffusionClassifier:
  """Scores images with a trained denoiser. `params` are the EMA parameters."""

  def __init__(self, config, params, mesh=None):
    self.config = config
    self.cfg = config.classify
    self.num_classes = config.data.num_classes
    self.mesh = mesh or sharding.make_mesh()
    sharding.check_batch_size(self.cfg.batch_size, "config.classify.batch_size")
    model_config = dataclasses.replace(UNetConfig.from_config(config), dtype=self.cfg.dtype, dropout=0.0)
    self.spec = kernel.KernelSpec.from_config(config)
    self.kernel = kernel.make_kernel(UNet(model_config), self.spec, self.mesh)
    self.params = jax.device_put(params, sharding.replicated(self.mesh))

  def errors(self, images, indices, draw_ids, class_ids) -> np.ndarray:
    """Errors [B, C', R] for one fixed-shape batch (numpy in, numpy out)."""
    arrays = {"images": images, "indices": indices, "draw_ids": draw_ids, "class_ids": class_ids}
    if not np.all(np.isfinite(images)):
      bad = int(indices[np.argmax(~np.isfinite(images).reshape(len(images), -1).all(axis=1))])
      raise FloatingPointError(f"image {bad} has NaN or infinite values")
    g = sharding.shared_to_global(self.mesh, arrays)
    out = self.kernel(self.params, g["images"], g["indices"], g["draw_ids"], g["class_ids"])
    return np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(out, tiled=True)))

  def score(self, images: np.ndarray, indices: np.ndarray) -> Tally:
    """Scores N images (float32 in [-1, 1]) with the config's adaptive mode; returns their Tally."""
    if self.cfg.prune_stages:
      return self._score_pruned(images, indices)
    return self._score_rounds(images, indices)

  def _score_rounds(self, images, indices) -> Tally:
    n, c, k = len(images), self.num_classes, self.cfg.num_draws
    b = self.cfg.batch_size
    r = k if self.cfg.adaptive == "none" else min(self.cfg.draws_per_round, k)
    tally = Tally.zeros(n, c)
    checks = aggregate.num_checks(k, r)
    queue = collections.deque(range(n))
    all_classes = np.broadcast_to(np.arange(c), (b, c))
    while queue:
      rows = np.array([queue.popleft() for _ in range(min(b, len(queue)))])
      draw_ids = tally.draws[rows][:, None] + np.arange(r)[None, :]
      errors = self.errors(*_pad(b, images[rows], indices[rows], draw_ids), all_classes)[: len(rows)]
      tally.add(rows, errors, all_classes[: len(rows)])
      for row in rows:
        if not self._done(tally, row, checks):
          queue.append(row)
    return tally

  def _done(self, tally: Tally, row: int, checks: int) -> bool:
    left = self.cfg.num_draws - tally.draws[row]
    if left <= 0:
      return True
    votes = tally.votes[row : row + 1]
    if self.cfg.adaptive == "exact":
      return bool(aggregate.exact_vote_decided(votes, np.array([left]))[0])
    if self.cfg.adaptive == "sequential":
      return bool(aggregate.sequential_vote_decided(votes, checks, self.cfg.delta)[0])
    return False

  def _score_pruned(self, images, indices) -> Tally:
    """Staged class pruning: each stage evaluates `draws` new draws on the candidate classes, then keeps the
    `keep` candidates with the lowest mean error for the next stage."""
    n, c, b = len(images), self.num_classes, self.cfg.batch_size
    tally = Tally.zeros(n, c)
    candidates = np.broadcast_to(np.arange(c), (n, c))
    first = 0
    for stage_draws, keep in self.cfg.prune_stages:
      draw_ids = np.broadcast_to(first + np.arange(stage_draws), (n, stage_draws))
      for lo in range(0, n, b):
        rows = np.arange(lo, min(lo + b, n))
        padded = _pad(b, images[rows], indices[rows], draw_ids[rows], candidates[rows])
        tally.add(rows, self.errors(*padded)[: len(rows)], candidates[rows])
      first += stage_draws
      order = np.argsort(np.take_along_axis(tally.mean_errors, candidates, axis=1), axis=1, kind="stable")
      candidates = np.take_along_axis(candidates, order[:, :keep], axis=1)
    return tally


def _pad(b: int, *arrays):
  """Pads each array's first axis to b by repeating its last row (results for padding are discarded)."""
  return tuple(np.concatenate([a, np.repeat(a[-1:], b - len(a), axis=0)]) if len(a) < b else a for a in arrays)
