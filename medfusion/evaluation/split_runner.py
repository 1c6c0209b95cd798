"""The one way a split goes through the diffusion classifier: in blocks of images, with a progress bar.

`medfusion.score`, `medfusion.sweep` and the diffusion_classifier evaluator all call these, so they see the same
images with the same draws.
"""

import dataclasses
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tqdm

from medfusion.classify import kernel
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.data import pipeline
from medfusion.evaluation.report import Totals


def progress_bar(total: int, desc: str, initial: int = 0, enabled: bool = True, unit: str = "img") -> tqdm.tqdm:
  """Images (or other `unit`s) done, their rate and the time left; advanced after every kernel call (process 0
  only)."""
  return tqdm.tqdm(
    total=total,
    initial=initial,
    desc=desc,
    unit=unit,
    disable=not enabled or jax.process_index() != 0,
    # class pruning advances by fractions of images (classifier.Progress): whole images are shown
    bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
  )


def classify_split(
  classifier: DiffusionClassifier,
  split: pipeline.Split,
  n: int,
  block: int | Callable[[], int],
  skip=(),
  progress=None,
) -> Iterator[Totals]:
  """Totals of images [0, n) of `split` except the indices in `skip`, in order, one block of up to `block` images
  at a time (a block is the unit a resumable run keeps); `block` may be a function giving each next block's size."""

  def score(images, index, label, progress):
    return Totals.from_tally(classifier.score(images, index, progress), index, label)

  return run_blocks(score, split, n, block, skip, progress)


def run_blocks(score, split: pipeline.Split, n: int, block: int | Callable[[], int], skip=(), progress=None):
  """`score(images, index, label, progress)` of images [0, n) of `split` except the indices in `skip`, in order,
  one block at a time (see classify_split); images are float32 in [-1, 1]. Any classifier (evaluation/predictors.py)
  goes through a split this way."""
  todo = np.setdiff1d(np.arange(min(n, len(split.labels))), np.asarray(list(skip), dtype=np.int64))
  while len(todo):
    index, todo = np.split(todo, [block() if callable(block) else block])
    part = pipeline.Split(split.images[index], split.labels[index], None)
    (batch,) = pipeline.eval_batches(part, len(index))
    yield score(batch["image"], index, batch["label"], progress)


def collect(blocks: Iterator):
  """One totals (report.Totals or report.SoftmaxTotals) of all blocks, in order."""
  blocks = list(blocks)
  kind = type(blocks[0])
  return kind(**{f.name: np.concatenate([getattr(b, f.name) for b in blocks]) for f in dataclasses.fields(kind)})


def draw_errors(classifier: DiffusionClassifier, split: pipeline.Split, n: int, progress=None):
  """(errors [n, C, K], t [n, K]) of the first n images: every class on draws 0..K-1 of medfusion.score."""
  errors = []
  for batch in pipeline.eval_batches(split, classifier.spec.batch_size, 0, n):
    rows = batch["valid"]
    errors.append(classifier.draw_errors(batch["image"][rows], batch["index"][rows], progress))
  _, t = kernel.image_draws(classifier.kernel_spec, np.arange(n))
  return np.concatenate(errors), np.asarray(t)
