"""explain_metrics.json: how good one run's counterfactuals and maps are, measured so that a reviewer can trust it.

- Counterfactuals (`counterfactual_scores`): per method, the valid-flip rate (the independent ResNet judge calls it
  the target class AND the mean change outside the lesion mask, or over the whole image, is below
  config.explain.valid_change) and its curve over change budgets (`scores.valid_flip_curve`: no threshold to
  choose), the judge's flip rate and the changes; the counterfactual toward the predicted
  class (still called that class? how much did it change?); the diffusion classifier's flip rate only as a
  consistency check (the model that drew the counterfactual judges it).
- Degradation references (`reference_scores`): a Gaussian blur and Gaussian noise at the weakest strength of a
  ladder that flips the judge, gated the same way: a counterfactual method has to beat destruction.
- Maps against lesion masks (`mask_scores`): mask-size precision (the headline), pointing game with 0- and 2-pixel
  tolerance, top-5 % IoU, for every map including Grad-CAM at every block of the judge.
- Faithfulness without masks (`faithfulness_scores`): deletion and insertion areas of every map, judged by the
  ResNet (and, with config.explain.faithfulness_draws > 0, by the diffusion classifier's vote share), against
  random pixel orders.
"""

import dataclasses

import numpy as np
from scipy import ndimage

from medfusion.classify.classifier import DiffusionClassifier
from medfusion.errors import ConfigError
from medfusion.evaluation import split_runner
from medfusion.explanations import faithfulness, maps, scores
from medfusion.explanations.results import Classified, Explained

BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # pixels
NOISE_SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # in units of the [-1, 1] image range
POINTING_TOLERANCES = (0, 2)  # pixels
RANDOM_ORDERS = 4  # random pixel orders averaged into the faithfulness reference


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
  """The --evaluate settings of `config.explain`."""

  valid_change: float
  faithfulness_steps: int
  faithfulness_draws: int

  def __post_init__(self):
    if not (isinstance(self.valid_change, (int, float)) and self.valid_change > 0):
      raise ConfigError(f"config.explain.valid_change={self.valid_change!r} must be a positive number")
    if not (isinstance(self.faithfulness_steps, int) and self.faithfulness_steps >= 2):
      raise ConfigError(f"config.explain.faithfulness_steps={self.faithfulness_steps!r} must be an integer >= 2")
    if not (isinstance(self.faithfulness_draws, int) and self.faithfulness_draws >= 0):
      raise ConfigError(f"config.explain.faithfulness_draws={self.faithfulness_draws!r} must be an integer >= 0")

  @classmethod
  def from_config(cls, config) -> "EvaluationSpec":
    e = config.explain
    return cls(e.valid_change, e.faithfulness_steps, e.faithfulness_draws)


def changes(images, edited, masks, rows) -> np.ndarray:
  """Mean |x - x_cf| of each pair (image rows[i], edited[i]) outside its image's lesion mask (the whole image when
  there are no masks or the mask is empty): [P]."""
  out = []
  for i, cf in zip(rows, edited, strict=True):
    whole = scores.proximity(images[i], cf)["whole"]
    outside = whole if masks is None or not np.any(masks[i]) else scores.proximity(images[i], cf, masks[i])["outside"]
    out.append(outside)
  return np.asarray(out, np.float64)


def _mean(values) -> float | None:
  """The mean of the finite values (None, valid JSON, when there is none)."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else None


def counterfactual_scores(ex: Explained, judge, classifier: DiffusionClassifier, spec: EvaluationSpec) -> dict:
  """Per counterfactual method: the changes, the diffusion classifier's flip rate (a consistency check only) and,
  with a judge, valid flips, its flip rate and its call on the counterfactual toward the predicted class."""
  n, c = len(ex.images), len(ex.class_names)
  predicted = ex.classified.prediction
  pair_image, pair_target = np.nonzero(np.arange(c)[None, :] != predicted[:, None])
  out = {}
  for method, cfs in ex.counterfactuals.items():
    pairs, kept = cfs[pair_image, pair_target], cfs[np.arange(n), predicted]
    change, kept_change = changes(ex.images, pairs, ex.masks, pair_image), changes(ex.images, kept, ex.masks, range(n))
    with split_runner.progress_bar(len(pairs), f"diffusion-judge counterfactuals ({method})") as bar:
      errors = classifier.draw_errors(pairs, ex.indices[pair_image], bar.update)
    whole = [scores.proximity(ex.images[i], x)["whole"] for i, x in zip(pair_image, pairs, strict=True)]
    entry = {"change_outside": _mean(change), "change_whole": _mean(whole)}
    if ex.masks is not None:
      inside = [
        scores.proximity(ex.images[i], x, ex.masks[i])["inside"] for i, x in zip(pair_image, pairs, strict=True)
      ]
      entry["change_inside"] = _mean(inside)
    entry["toward_prediction_change"] = _mean(kept_change)
    if judge is not None:
      judged, kept_judged = (np.argmax(judge.probabilities(x), axis=1) for x in (pairs, kept))
      entry["valid_flip_rate"] = _mean(scores.valid_flips(judged, pair_target, change, spec.valid_change))
      entry["valid_flip_curve"] = scores.valid_flip_curve(judged, pair_target, change)
      entry["flip_rate_judge"] = scores.flip_rate(judged, pair_target)
      entry["toward_prediction_kept_rate_judge"] = scores.flip_rate(kept_judged, predicted)
      valid_kept = scores.valid_flips(kept_judged, predicted, kept_change, spec.valid_change)
      entry["toward_prediction_valid_rate"] = _mean(valid_kept)
    prediction = Classified.from_errors(errors).prediction
    entry["flip_rate_diffusion_consistency_only"] = scores.flip_rate(prediction, pair_target)
    out[method] = entry
  return out


def degrade(images, kind: str, strength: float, seed: int = 0) -> np.ndarray:
  """A Gaussian blur ("blur", sigma in pixels) or added Gaussian noise ("noise", std; clipped to [-1, 1])."""
  images = np.asarray(images, np.float32)
  if kind == "blur":
    return ndimage.gaussian_filter(images, (0, strength, strength, 0), mode="nearest").astype(np.float32)
  noise = np.random.default_rng(seed).normal(0.0, strength, images.shape)
  return np.clip(images + noise, -1.0, 1.0).astype(np.float32)


def reference_scores(ex: Explained, judge, spec: EvaluationSpec) -> dict:
  """For blur and noise: each pair's image degraded at the weakest ladder strength that the judge calls the target
  class, gated as the counterfactuals are (the valid-flip rate a destroyer reaches)."""
  c = len(ex.class_names)
  pair_image, pair_target = np.nonzero(np.arange(c)[None, :] != ex.classified.prediction[:, None])
  out = {}
  for kind, ladder in (("blur", BLUR_SIGMAS), ("noise", NOISE_SIGMAS)):
    strength = np.full(len(pair_image), np.nan)
    change = np.full(len(pair_image), np.inf)
    for s in ladder:  # weakest first: keep the first strength that flips each pair
      degraded = degrade(ex.images[pair_image], kind, s)
      flipped = (np.argmax(judge.probabilities(degraded), axis=1) == pair_target) & np.isnan(strength)
      strength[flipped] = s
      change[flipped] = changes(ex.images, degraded[flipped], ex.masks, pair_image[flipped])
    judged = np.where(np.isnan(strength), -1, pair_target)
    out[kind] = {
      "ladder": list(ladder),
      "flip_rate_judge": _mean(~np.isnan(strength)),
      "valid_flip_rate": _mean(scores.valid_flips(judged, pair_target, change, spec.valid_change)),
      "valid_flip_curve": scores.valid_flip_curve(judged, pair_target, change),
      "median_strength_that_flips": _mean([np.nanmedian(strength)]) if np.isfinite(strength).any() else None,
      "change_outside_at_that_strength": _mean(change),
    }
  return out


def mask_scores(ex: Explained) -> dict:
  """Every map against the lesion masks of the images that have one (empty masks are skipped)."""
  lesion = [i for i in range(len(ex.images)) if np.any(ex.masks[i] > 0)]
  out = {}
  for kind, values in ex.maps.items():
    entry = {"mask_size_precision": _mean([scores.mask_size_precision(values[i], ex.masks[i]) for i in lesion])}
    for tol in POINTING_TOLERANCES:
      entry[f"pointing_game_{tol}px"] = _mean([scores.pointing_game(values[i], ex.masks[i], tol) for i in lesion])
    entry["top_fraction_iou"] = _mean([scores.top_fraction_iou(values[i], ex.masks[i]) for i in lesion])
    out[kind] = entry
  return out


def _areas(probability, images, saliencies, classes, steps: int, seed: int) -> dict:
  return {
    f"{mode}_auc": _mean(
      faithfulness.area(faithfulness.curves(probability, images, saliencies, classes, steps, mode, seed))
    )
    for mode in faithfulness.MODES
  }


def faithfulness_scores(ex: Explained, probability, classes, steps: int, kinds, desc: str = "faithfulness") -> dict:
  """Deletion and insertion areas of the maps `kinds` (probability of `classes`), and of random pixel orders; a
  progress bar `desc` counts the maps."""
  out = {}
  shape = ex.images.shape[1:3]
  references = []
  with split_runner.progress_bar(len(kinds) + RANDOM_ORDERS, desc, unit="map") as bar:
    for kind in kinds:
      out[kind] = _areas(probability, ex.images, ex.maps[kind], classes, steps, 0)
      bar.update(1)
    for r in range(RANDOM_ORDERS):
      random = np.stack([maps.random_map(shape, 1000 * r + i) for i in range(len(ex.images))])
      references.append(_areas(probability, ex.images, random, classes, steps, 1000 * r))
      bar.update(1)
  out["random"] = {key: _mean([a[key] for a in references]) for key in references[0]}
  return out


def diffusion_probability(classifier: DiffusionClassifier, draws: int, indices):
  """The diffusion classifier's vote share per class on `draws` draws, as a function of images [M, H, W, C] whose
  first rows repeat each index of `indices` steps + 1 times (the faithfulness curves)."""
  config = classifier.config.copy_and_resolve_references()
  config.classify.num_draws = draws
  few = DiffusionClassifier(config, classifier.params, classifier.mesh, classifier.source)

  def probability(images):
    ids = np.repeat(np.asarray(indices), len(images) // len(indices))
    errors = few.draw_errors(images, ids)
    votes = np.stack([np.sum(np.argmin(errors, axis=1) == k, axis=1) for k in range(errors.shape[1])], axis=1)
    return votes / draws

  return probability


# the maps the diffusion classifier's (costly) faithfulness curves are drawn for
DIFFUSION_CURVE_MAPS = (
  "counterfactual_ddim_inversion",
  "counterfactual_partial_noising",
  "error_difference",
  "grad_cam",
  "input_gradient",
  "blob",
)


def evaluate(ex: Explained, classifier: DiffusionClassifier, judge, config) -> dict:
  """explain_metrics.json's content (see the module docstring); without a judge, only what needs none."""
  spec = EvaluationSpec.from_config(config)
  e = config.explain
  result = {
    "n": len(ex.images),
    "masks": ex.masks is not None,
    "settings": {
      "t_star": float(e.t_star),
      "guidance": float(e.guidance),
      "steps": int(e.steps),
      "invert_class": e.invert_class,
      "smoothing_sigma": float(e.smoothing_sigma),
      "valid_change": float(spec.valid_change),
      "grad_cam_layer": e.grad_cam_layer,
      "faithfulness_steps": spec.faithfulness_steps,
      "faithfulness_removal_sigma": faithfulness.REMOVAL_SIGMA,
      "faithfulness_draws": spec.faithfulness_draws,
    },
    "diffusion_accuracy": _mean(ex.classified.prediction == ex.labels),
    "pairs": int(len(ex.images) * (len(ex.class_names) - 1)),
  }
  result["counterfactuals"] = counterfactual_scores(ex, judge, classifier, spec)
  if judge is None:
    return result
  result["judge"] = judge.description
  result["judge_accuracy"] = _mean(ex.judge_prediction == ex.labels)
  result["grad_cam_feature_sizes"] = judge.feature_sizes(ex.images)
  result["references"] = reference_scores(ex, judge, spec)
  if ex.masks is not None:
    result["images_with_mask"] = int(sum(np.any(m > 0) for m in ex.masks))
    result["maps"] = mask_scores(ex)
  result["faithfulness_judge"] = faithfulness_scores(
    ex, judge.probabilities, ex.judge_prediction, spec.faithfulness_steps, list(ex.maps), "faithfulness (judge)"
  )
  if spec.faithfulness_draws:
    kinds = [k for k in DIFFUSION_CURVE_MAPS if k in ex.maps]
    probability = diffusion_probability(classifier, spec.faithfulness_draws, ex.indices)
    result["faithfulness_diffusion"] = faithfulness_scores(
      ex, probability, ex.classified.prediction, spec.faithfulness_steps, kinds, "faithfulness (diffusion classifier)"
    )
  return result
