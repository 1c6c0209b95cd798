"""The diffusion classifier: runs the error kernel over images, full budget or adaptively, and tallies.

Every image has a fixed sequence of K draws (`draws.py`). Full budget evaluates all K for all classes.
Adaptive modes evaluate `draws_per_round` draws at a time and take decided images out of the batch; the
remaining ones are repacked with waiting images into batches of the same fixed shape, so nothing recompiles.
"""

import collections
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.experimental.multihost_utils
import numpy as np

from medfusion import sharding
from medfusion.classify import aggregate, kernel
from medfusion.errors import ConfigError
from medfusion.models import make_denoiser
from medfusion.models.unet import DTYPES

# called with the number of images finished since the last call (a fraction of them where stages of class pruning
# finish parts of an image)
Progress = Callable[[float], object] | None


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
  """How images are batched and how many draws they get, from `config.classify` (the kernel has `KernelSpec`)."""

  num_classes: int
  num_draws: int
  batch_size: int
  dtype: str
  adaptive: str
  draws_per_round: int
  delta: float
  min_draws: int
  prune_stages: tuple[tuple[int, int], ...]

  def __post_init__(self):
    for name in ("batch_size", "draws_per_round"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"config.classify.{name}={getattr(self, name)!r} must be positive")
    if self.dtype not in DTYPES:
      raise ConfigError(f"config.classify.dtype={self.dtype!r} is not one of {DTYPES}")
    if self.adaptive not in aggregate.ADAPTIVE:
      raise ConfigError(f"config.classify.adaptive={self.adaptive!r} is not one of {aggregate.ADAPTIVE}")
    if not 0.0 < self.delta < 1.0:
      raise ConfigError(f"config.classify.delta={self.delta!r} must be in (0, 1)")
    if not (isinstance(self.min_draws, int) and self.min_draws >= 0):
      raise ConfigError(f"config.classify.min_draws={self.min_draws!r} must be a non-negative integer")
    if self.adaptive != "none" and self.num_draws % self.draws_per_round:
      raise ConfigError(
        f"config.classify.num_draws={self.num_draws} must be a multiple of classify.draws_per_round="
        f"{self.draws_per_round}"
      )
    if self.prune_stages:
      if sum(d for d, _ in self.prune_stages) > self.num_draws:
        raise ConfigError(
          f"config.classify.prune_stages={self.prune_stages} uses more than num_draws={self.num_draws} draws"
        )
      kept = [k for _, k in self.prune_stages]
      if any(k < 1 for k in kept) or kept[0] > self.num_classes or kept != sorted(kept, reverse=True):
        raise ConfigError(
          f"config.classify.prune_stages={self.prune_stages}: classes kept must shrink from at most "
          "data.num_classes to >= 1"
        )

  @classmethod
  def from_config(cls, config) -> "ClassifierSpec":
    c = config.classify
    stages = tuple((int(d), int(k)) for d, k in c.prune_stages)
    return cls(
      config.data.num_classes,
      c.num_draws,
      c.batch_size,
      c.dtype,
      c.adaptive,
      c.draws_per_round,
      c.delta,
      c.min_draws,
      stages,
    )


@dataclasses.dataclass
class Tally:
  """Per-image running totals over the draws evaluated so far (numpy, on the host)."""

  votes: np.ndarray  # [N, C] int
  error_sum: np.ndarray  # [N, C] float64
  error_count: np.ndarray  # [N, C] int: draws evaluated per class
  draws: np.ndarray  # [N] int: draws evaluated per image
  nfe: np.ndarray  # [N] int: network evaluations per image
  error_gram: np.ndarray  # [N, C, C] float64: sums of e_c * e_c' over the draws (paired gaps' spread)
  # [N, C] float: for a class dropped by class pruning, its mean error minus the leader's on the draws both had
  # when it was dropped (paired, >= 0); NaN for classes never dropped
  pruned_gap: np.ndarray

  @classmethod
  def zeros(cls, n: int, c: int) -> "Tally":
    per_class = np.zeros((n, c), int)
    zeros = np.zeros(n, int)
    return cls(
      per_class, np.zeros((n, c)), per_class.copy(), zeros, zeros.copy(), np.zeros((n, c, c)), np.full((n, c), np.nan)
    )

  def add(self, rows, errors, class_ids) -> None:
    """Adds errors [b, C', R] of images `rows` evaluated on `class_ids` [b, C']."""
    num_classes = self.votes.shape[1]
    full = np.full((len(rows), num_classes, errors.shape[2]), np.inf)
    np.put_along_axis(full, class_ids[:, :, None], errors, axis=1)
    evaluated = np.isfinite(full[:, :, 0])
    self.votes[rows] += aggregate.votes_from_errors(full, evaluated)
    paired = np.where(evaluated[:, :, None], full, 0.0)
    self.error_sum[rows] += paired.sum(axis=2)
    self.error_gram[rows] += np.einsum("bcr,bdr->bcd", paired, paired)
    self.error_count[rows] += evaluated * errors.shape[2]
    self.draws[rows] += errors.shape[2]
    self.nfe[rows] += errors.shape[1] * errors.shape[2]

  @property
  def mean_errors(self) -> np.ndarray:
    """Mean error per class over the image's draws. A class dropped by class pruning was evaluated on fewer draws
    than the survivors, so its own mean does not compare with theirs: it gets the best survivor's mean plus its
    paired gap to the leader when it was dropped (`pruned_gap`), so it never wins and keeps a probability that
    reflects how far behind it was. +inf for classes never evaluated."""
    survivors = (self.error_count > 0) & (self.error_count == self.error_count.max(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
      means = np.where(survivors, self.error_sum / np.maximum(self.error_count, 1), np.inf)
    dropped = ~survivors & np.isfinite(self.pruned_gap)
    return np.where(dropped, means.min(axis=1, keepdims=True) + np.nan_to_num(self.pruned_gap), means)


def prune_in_stages(n: int, num_classes: int, stages, batch_size: int, errors_of, progress: Progress = None) -> Tally:
  """Staged class pruning of images 0..n-1: each stage (draws, keep) evaluates `draws` new draws on the candidate
  classes, then keeps the `keep` candidates with the lowest mean error; a dropped class keeps its gap to the leader
  on the draws they shared (`Tally.pruned_gap`). `errors_of(rows, draw_ids, classes)` gives the errors [b, C', R]
  of those images on those draws and classes: the network, or the stored draws of a replay (medfusion.sweep)."""
  tally = Tally.zeros(n, num_classes)
  candidates = np.broadcast_to(np.arange(num_classes), (n, num_classes))
  first = 0
  # progress advances with the work done: each stage's share of an image's network evaluations
  classes_per_stage = [num_classes] + [keep for _, keep in stages[:-1]]
  costs = [draws * classes for (draws, _), classes in zip(stages, classes_per_stage, strict=True)]
  for stage, (stage_draws, keep) in enumerate(stages):
    draw_ids = np.broadcast_to(first + np.arange(stage_draws), (n, stage_draws))
    for lo in range(0, n, batch_size):
      rows = np.arange(lo, min(lo + batch_size, n))
      tally.add(rows, errors_of(rows, draw_ids[rows], candidates[rows]), candidates[rows])
      if progress is not None:
        progress(len(rows) * costs[stage] / sum(costs))
    first += stage_draws
    means = np.take_along_axis(tally.mean_errors, candidates, axis=1)
    order = np.argsort(means, axis=1, kind="stable")
    dropped = np.take_along_axis(candidates, order[:, keep:], axis=1)
    gaps = np.take_along_axis(means, order[:, keep:], axis=1) - means.min(axis=1, keepdims=True)
    np.put_along_axis(tally.pruned_gap, dropped, gaps, axis=1)
    candidates = np.take_along_axis(candidates, order[:, :keep], axis=1)
  return tally


class DiffusionClassifier:
  """Scores images with a trained denoiser. `params` are the EMA parameters; `source` names them in errors."""

  def __init__(self, config, params, mesh=None, source: str = "the model"):
    self.config = config
    self.spec = ClassifierSpec.from_config(config)
    self.num_classes = config.data.num_classes
    self.source = source
    self.mesh = mesh or sharding.make_mesh()
    sharding.check_batch_size(self.spec.batch_size, "config.classify.batch_size")
    self.kernel_spec = kernel.KernelSpec.from_config(config)
    self.kernel = kernel.make_kernel(make_denoiser(config, self.spec.dtype, 0.0), self.kernel_spec, self.mesh)
    self.params = jax.device_put(params, sharding.replicated(self.mesh))

  @functools.cached_property
  def pixel_kernel(self):
    """The kernel that also returns each class's per-pixel error (`kernel.make_pixel_error_kernel`), compiled on
    first use: only explanations ask for it."""
    model = make_denoiser(self.config, self.spec.dtype, 0.0)
    return kernel.make_pixel_error_kernel(model, self.kernel_spec, self.mesh)

  def errors(self, images, indices, draw_ids, class_ids, pixels: bool = False):
    """Errors [b, C', R] of up to B images (numpy in, numpy out); shorter batches are padded to B.

    With `pixels`, (errors, pixel_errors [b, C', H, W]): each class's per-pixel error averaged over the R draws,
    from the same evaluations (the error-difference map of medfusion.explain).
    """
    b = len(images)
    if not np.all(np.isfinite(images)):
      bad = int(indices[np.argmax(~np.isfinite(images).reshape(b, -1).all(axis=1))])
      raise FloatingPointError(f"image {bad} has NaN or infinite values")
    padded = self.pad(images, indices, draw_ids, class_ids)
    arrays = dict(zip(("images", "indices", "draw_ids", "class_ids"), padded, strict=True))
    g = sharding.shared_to_global(self.mesh, arrays)
    fn = self.pixel_kernel if pixels else self.kernel
    out = fn(self.params, g["images"], g["indices"], g["draw_ids"], g["class_ids"])
    out = [
      np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(a, tiled=True)))[:b]
      for a in (out if pixels else (out,))
    ]
    for values in out:
      if not np.all(np.isfinite(values)):
        bad = int(indices[np.argmax(~np.isfinite(values).reshape(b, -1).all(axis=1))])
        raise FloatingPointError(
          f"{self.source} gave NaN or infinite denoising errors (first on image {bad}): its parameters are corrupt "
          "or training diverged"
        )
    return tuple(out) if pixels else out[0]

  def pad(self, *arrays):
    """Pads each array's first axis to the batch size by repeating its last row (results are discarded)."""
    b = self.spec.batch_size
    return tuple(np.concatenate([a, np.repeat(a[-1:], b - len(a), axis=0)]) if len(a) < b else a for a in arrays)

  def score(self, images: np.ndarray, indices: np.ndarray, progress: Progress = None) -> Tally:
    """Scores N images (float32 in [-1, 1]) with the config's adaptive mode; returns their Tally.

    `progress(n)` is called after every kernel call with the number of images that call finished.
    """
    if self.spec.prune_stages:
      return self._score_pruned(images, indices, progress)
    return self._score_rounds(images, indices, progress)

  def draw_errors(self, images: np.ndarray, indices: np.ndarray, progress: Progress = None, pixels: bool = False):
    """Errors [N, C, K] of every class on all K draws: what `score` aggregates at the full budget. With `pixels`,
    (errors, pixel_errors [N, C, H, W]) as `errors` gives them."""
    b, c, k = self.spec.batch_size, self.num_classes, self.spec.num_draws
    classes, draw_ids = np.broadcast_to(np.arange(c), (b, c)), np.broadcast_to(np.arange(k), (b, k))
    out = []
    for lo in range(0, len(images), b):
      rows = slice(lo, min(lo + b, len(images)))
      n = rows.stop - rows.start
      out.append(self.errors(images[rows], indices[rows], draw_ids[:n], classes[:n], pixels))
      if progress is not None:
        progress(n)
    empty = np.zeros((0, c, k))
    if not pixels:
      return np.concatenate(out) if out else empty
    if not out:
      return empty, np.zeros((0, c, *images.shape[1:3]))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))

  def _score_rounds(self, images, indices, progress: Progress) -> Tally:
    n, c, k, b = len(images), self.num_classes, self.spec.num_draws, self.spec.batch_size
    r = k if self.spec.adaptive == "none" else min(self.spec.draws_per_round, k)
    tally = Tally.zeros(n, c)
    rule = aggregate.StoppingRule.build(self.spec.adaptive, k, r, c, self.spec.delta, self.spec.min_draws)
    queue = collections.deque(range(n))
    all_classes = np.broadcast_to(np.arange(c), (b, c))
    while queue:
      rows = np.array([queue.popleft() for _ in range(min(b, len(queue)))])
      draw_ids = tally.draws[rows][:, None] + np.arange(r)[None, :]
      classes = all_classes[: len(rows)]
      tally.add(rows, self.errors(images[rows], indices[rows], draw_ids, classes), classes)
      done = rule.decided(tally.votes[rows], k - tally.draws[rows], tally.error_sum[rows], tally.error_gram[rows])
      queue.extend(rows[~done])
      if progress is not None:
        progress(int(done.sum()))
    return tally

  def _score_pruned(self, images, indices, progress: Progress) -> Tally:
    def errors_of(rows, draw_ids, classes):
      return self.errors(images[rows], indices[rows], draw_ids, classes)

    stages, batch_size = self.spec.prune_stages, self.spec.batch_size
    return prune_in_stages(len(images), self.num_classes, stages, batch_size, errors_of, progress)
