"""How good an explanation is, against a known lesion mask (numpy only).

- `pointing_game`: does the map's maximum fall inside the mask, or within `tolerance` pixels of it (Zhang et al.
  2018 allow 15 pixels on 224-px images; lesions here are 3-5 pixels across, so 0 and 2 are reported)?
- `top_fraction_iou`: IoU of the map's top 5 % pixels with the mask. Its ceiling is |mask| / (5 % of the image)
  when lesions are smaller than that (synthetic lesions: 10-26 of 1,024 pixels, a ceiling of ~0.33), so
- `mask_size_precision` also reports the share of the map's |mask| highest pixels inside the mask (1 at best).
- `proximity`: mean |x - x_cf| inside and outside the mask (a counterfactual should change the lesion and keep the
  rest); without a mask, over the whole image.
- `flip_rate`: the share of counterfactuals that a judge classifies as their target class.
- `valid_flips`: a counterfactual is a valid flip only when the judge calls it the target class AND its change
  outside the lesion (or over the whole image) stays below a threshold: a blur or noise that fools the judge by
  destroying the image is not an explanation.
"""

import math

import numpy as np
from scipy import ndimage

TOP_FRACTION = 0.05


def _mask(mask) -> np.ndarray:
  """A mask [H, W] or [H, W, 1] as bool [H, W]."""
  mask = np.asarray(mask)
  if mask.ndim == 3:
    mask = mask[..., 0]
  return mask > 0


def pointing_game(saliency, mask, tolerance: float = 0.0) -> bool:
  """True when the map's maximum (the first one in row-major order on ties) lies inside the mask or within
  `tolerance` pixels (Euclidean) of one of its pixels."""
  saliency, mask = np.asarray(saliency), _mask(mask)
  if saliency.shape != mask.shape:
    raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
  if not mask.any():
    return False
  peak = np.unravel_index(np.argmax(saliency), saliency.shape)
  return bool(ndimage.distance_transform_edt(~mask)[peak] <= tolerance)


def top_fraction_iou(saliency, mask, fraction: float = TOP_FRACTION) -> float:
  """IoU of the ceil(fraction * H * W) highest map pixels (ties broken by position) with the mask."""
  saliency, mask = np.asarray(saliency), _mask(mask)
  if saliency.shape != mask.shape:
    raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction={fraction} must be in (0, 1]")
  k = math.ceil(fraction * saliency.size)
  top = np.zeros(saliency.size, bool)
  top[np.argsort(-saliency.reshape(-1), kind="stable")[:k]] = True
  flat = mask.reshape(-1)
  union = np.sum(top | flat)
  return float(np.sum(top & flat) / union) if union else 0.0


def mask_size_precision(saliency, mask) -> float:
  """The share of the map's |mask| highest pixels (ties broken by position) that lie inside the mask: 1 when the
  map ranks exactly the lesion first, whatever its size (NaN for an empty mask)."""
  saliency, mask = np.asarray(saliency), _mask(mask)
  if saliency.shape != mask.shape:
    raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
  k = int(mask.sum())
  if k == 0:
    return math.nan
  top = np.argsort(-saliency.reshape(-1), kind="stable")[:k]
  return float(mask.reshape(-1)[top].mean())


def proximity(image, counterfactual, mask=None) -> dict[str, float]:
  """Mean |x - x_cf| (over pixels and channels) {"inside", "outside"} the mask, or {"whole"} without one.

  A region with no pixels (an empty mask) gives NaN.
  """
  difference = np.abs(np.asarray(image, np.float64) - np.asarray(counterfactual, np.float64)).mean(axis=-1)
  if mask is None:
    return {"whole": float(difference.mean())}
  mask = _mask(mask)
  if mask.shape != difference.shape:
    raise ValueError(f"mask {mask.shape} and image {difference.shape} differ in shape")
  inside, outside = difference[mask], difference[~mask]
  return {
    "inside": float(inside.mean()) if inside.size else math.nan,
    "outside": float(outside.mean()) if outside.size else math.nan,
  }


def flip_rate(predictions, targets) -> float:
  """The share of counterfactuals classified as their target class (NaN for none)."""
  predictions, targets = np.asarray(predictions), np.asarray(targets)
  if predictions.shape != targets.shape:
    raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} differ in shape")
  return float(np.mean(predictions == targets)) if predictions.size else math.nan


def valid_flips(judged, targets, changes, threshold: float) -> np.ndarray:
  """bool [N]: the judge called counterfactual i its target class and its change (mean |x - x_cf| outside the
  lesion mask, or over the whole image) is below `threshold`."""
  judged, targets, changes = np.asarray(judged), np.asarray(targets), np.asarray(changes, np.float64)
  if not judged.shape == targets.shape == changes.shape:
    raise ValueError(f"judged {judged.shape}, targets {targets.shape} and changes {changes.shape} differ in shape")
  return (judged == targets) & (changes < threshold)


# Change budgets (mean |x - x_cf| on the [-1, 1] range) at which `valid_flip_curve` counts valid flips.
CHANGE_BUDGETS = tuple(round(0.01 * i, 2) for i in range(1, 31))


def valid_flip_curve(judged, targets, changes, budgets=CHANGE_BUDGETS) -> dict:
  """`valid_flips`' rate at every change budget, and its mean over the budgets (`area`, 0-1): how often an edit
  flips the judge within each budget, so edits compare without one threshold chosen for a dataset (without a
  lesion mask, the change counts the class evidence itself)."""
  rates = [float(np.mean(valid_flips(judged, targets, changes, b))) for b in budgets]
  return {"budgets": list(budgets), "rates": rates, "area": float(np.mean(rates))}
