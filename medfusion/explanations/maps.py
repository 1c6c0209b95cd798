"""Explanation maps [H, W] in [0, 1]: where an image carries the evidence for its class.

Each map explains the decision between the predicted class p and a contrast class c' (`contrast_classes`: the
runner-up by mean error, the other class when there are two):
- `counterfactual_difference`: |x - x_cf(c')|, what the denoiser changes to turn x into class c'.
- `error_difference`: |E_c' - E_p| per pixel, the difference of the two classes' denoising errors averaged over the
  classification draws (`medfusion.classify.kernel.local_pixel_errors`).
- Model-free baselines: `intensity` (the naive map: bright pixels) and `blob` (a difference of Gaussians: bright
  spots). The ResNet judge's gradient maps (Grad-CAM, input gradients, SmoothGrad, integrated gradients) are in
  `saliency.py`.

Difference maps and gradient maps are smoothed with a Gaussian of `config.explain.smoothing_sigma` pixels
(scipy.ndimage.gaussian_filter), then min-max normalised per image; a constant map becomes all zeros.
"""

import numpy as np
from scipy import ndimage


def normalise(values) -> np.ndarray:
  """Min-max scaling of one map to [0, 1]; a constant (or non-finite) map becomes zeros."""
  values = np.asarray(values, np.float64)
  lo, hi = values.min(), values.max()
  if not np.isfinite(hi - lo) or hi - lo <= 0:
    return np.zeros(values.shape, np.float32)
  return ((values - lo) / (hi - lo)).astype(np.float32)


def smooth(values, sigma: float) -> np.ndarray:
  """A Gaussian blur of one map [H, W] with `sigma` pixels (edges repeat the border); sigma 0 returns it unchanged."""
  values = np.asarray(values, np.float64)
  return ndimage.gaussian_filter(values, sigma, mode="nearest") if sigma > 0 else values


def contrast_classes(mean_errors: np.ndarray, predicted: np.ndarray) -> np.ndarray:
  """The class each map contrasts with the prediction: the lowest mean error among the other classes [N]."""
  masked = np.asarray(mean_errors, np.float64).copy()
  masked[np.arange(len(predicted)), predicted] = np.inf
  return np.argmin(masked, axis=1)


def counterfactual_difference(image, counterfactual, sigma: float) -> np.ndarray:
  """|x - x_cf| averaged over channels, smoothed and normalised: [H, W] from two [H, W, C] images."""
  difference = np.abs(np.asarray(image, np.float64) - np.asarray(counterfactual, np.float64)).mean(axis=-1)
  return normalise(smooth(difference, sigma))


def error_difference(pixel_errors, predicted: int, contrast: int, sigma: float) -> np.ndarray:
  """|E_contrast - E_predicted| of one image's per-class pixel errors [C, H, W], smoothed and normalised."""
  pixel_errors = np.asarray(pixel_errors, np.float64)
  return normalise(smooth(np.abs(pixel_errors[contrast] - pixel_errors[predicted]), sigma))


def intensity(image) -> np.ndarray:
  """The naive baseline: the image's own brightness (mean over channels), normalised."""
  return normalise(np.asarray(image, np.float64).mean(axis=-1))


BLOB_SIGMAS = (1.0, 4.0)


def blob(image, sigmas: tuple[float, float] = BLOB_SIGMAS) -> np.ndarray:
  """The model-free bright-blob detector: a difference of Gaussian blurs of the input (sigma 1 minus sigma 4 pixels,
  mean over channels), normalised. It marks spots a few pixels across that are brighter than their surroundings,
  so on data where lesions are such spots it is the bar a learned map has to clear."""
  gray = np.asarray(image, np.float64).mean(axis=-1)
  fine, coarse = (ndimage.gaussian_filter(gray, s, mode="nearest") for s in sigmas)
  return normalise(fine - coarse)


def random_map(shape, seed: int) -> np.ndarray:
  """A map of independent uniform values: the random pixel order faithfulness curves are measured against."""
  return np.random.default_rng(seed).random(shape).astype(np.float32)
