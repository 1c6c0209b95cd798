"""Counterfactuals: an input x edited toward a target class c' by the class-conditional denoiser.

Two methods (`config.explain.method`):
- partial_noising (SDEdit, as in Favero et al. 2025): noise x to t* with fresh noise and denoise under c' with
  guidance. What the noise destroys is redrawn, so anatomy far from the lesion can change too.
- ddim_inversion: run DDIM backwards from x to t* under the null class (or the predicted class), then forwards
  under c' with guidance. The path to t* is deterministic and encodes x itself, so more of the patient's anatomy
  is kept.

Both run round(t* x config.explain.steps) steps each way, i.e. the step size of `steps` steps over [0, 1].
"""

import dataclasses

import numpy as np

from medfusion.errors import ConfigError
from medfusion.explanations import sampler as sampler_lib

METHODS = ("partial_noising", "ddim_inversion")
INVERT_CLASSES = ("null", "predicted")


@dataclasses.dataclass(frozen=True)
class CounterfactualSpec:
  """How counterfactuals are made, from `config.explain`."""

  method: str
  t_star: float
  invert_class: str

  def __post_init__(self):
    if self.method not in METHODS:
      raise ConfigError(f"config.explain.method={self.method!r} is not one of {METHODS}")
    if not 0.0 < self.t_star <= 1.0:
      raise ConfigError(f"config.explain.t_star={self.t_star!r} must be in (0, 1]")
    if self.invert_class not in INVERT_CLASSES:
      raise ConfigError(f"config.explain.invert_class={self.invert_class!r} is not one of {INVERT_CLASSES}")

  @classmethod
  def from_config(cls, config, method: str | None = None) -> "CounterfactualSpec":
    """The config's spec; `method` replaces config.explain.method (medfusion.explain --evaluate runs both)."""
    e = config.explain
    return cls(method or e.method, float(e.t_star), e.invert_class)


def counterfactuals(
  sampler: sampler_lib.Sampler,
  spec: CounterfactualSpec,
  images: np.ndarray,
  indices: np.ndarray,
  targets: np.ndarray,
  predicted: np.ndarray | None = None,
  progress=None,
) -> np.ndarray:
  """Counterfactuals [N, T, H, W, C] of images [N, H, W, C] (split indices [N]) toward classes targets [N, T].

  `predicted` [N] (the classifier's predictions) is needed by ddim_inversion with invert_class 'predicted'.
  Every target of one image starts from the same noise (partial_noising) or the same inversion (ddim_inversion).
  `progress(n)` is called with the number of counterfactuals each sampler call finished.
  """
  images, indices, targets = np.asarray(images, np.float32), np.asarray(indices), np.asarray(targets)
  n, t = targets.shape
  flat_x = np.repeat(images, t, axis=0)
  flat_indices, flat_targets = np.repeat(indices, t), targets.reshape(-1)
  if spec.method == "partial_noising":
    program = sampler_lib.Program("partial_noising", spec.t_star)
    out = sampler.run(program, flat_x, flat_targets, flat_indices, progress)
  else:
    if spec.invert_class == "predicted":
      if predicted is None:
        raise ValueError("invert_class='predicted' needs the predicted classes")
      invert_labels = np.asarray(predicted)
    else:
      invert_labels = np.full(n, sampler.spec.null_class)
    inverted = sampler.run(sampler_lib.Program("invert", spec.t_star), images, invert_labels, indices)
    program = sampler_lib.Program("denoise", spec.t_star)
    out = sampler.run(program, np.repeat(inverted, t, axis=0), flat_targets, flat_indices, progress)
  return out.reshape(n, t, *images.shape[1:])
