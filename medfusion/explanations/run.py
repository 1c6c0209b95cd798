"""What medfusion.sample and medfusion.explain do: sample grids, and explanations of a split's images.

`explain_split` classifies the chosen images at the full budget of config.classify (adaptive modes and pruning are
turned off so every image has all K draws for the error-difference map), makes counterfactuals toward every class,
computes the maps, and writes per image a PNG panel (gallery.save_panel_png), then OUT/explanations.npz, with
--evaluate OUT/explain_metrics.json, and last OUT/index.html (gallery.write_index). Nothing is written before all
images are done; every file is written atomically.
"""

import dataclasses
import logging
import math
import os

import jax
import numpy as np

from medfusion import metrics, modeldir, plots
from medfusion.classify import aggregate
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.data import pipeline
from medfusion.errors import UserError
from medfusion.evaluation import split_runner
from medfusion.explanations import counterfactual, gallery, maps, scores
from medfusion.explanations import sampler as sampler_lib
from medfusion.explanations.judge import Judge
from medfusion.writers import write_json_atomic, write_npz_atomic

log = logging.getLogger("medfusion")

SELECTIONS = ("first", "errors", "uncertain", "random")
METHOD_TITLES = {"partial_noising": "partial noising", "ddim_inversion": "DDIM inversion"}
MAP_TITLES = {
  "error_difference": "error difference",
  "intensity": "intensity (naive)",
  "grad_cam": "Grad-CAM (ResNet)",
  "input_gradient": "input gradient (ResNet)",
  **{f"counterfactual_{m}": f"counterfactual difference ({t})" for m, t in METHOD_TITLES.items()},
}


# --- Sampling ---------------------------------------------------------------------------------------------------------


def class_ids(spec: str, class_names) -> list[int]:
  """Comma-separated class names ('' for all; 'null' for the unconditional model) as label indices."""
  names = [n.strip() for n in spec.split(",") if n.strip()] or list(class_names)
  ids = []
  for name in names:
    if name == "null":
      ids.append(len(class_names))
    elif name in class_names:
      ids.append(list(class_names).index(name))
    else:
      raise UserError(f"--class={name!r} is not one of {(*class_names, 'null')}")
  return ids


def sample_classes(config, workdir: str, classes: str, num: int, output: str) -> dict:
  """`num` samples of each class in `classes` from pure noise: OUT/samples.png (one block of rows per class) and
  OUT/samples.npz (samples [classes, num, H, W, C] in [-1, 1], class names, settings). Returns the settings."""
  if num <= 0:
    raise UserError(f"--num={num} must be positive")
  names = [*config.data.class_names, "null"]
  ids = class_ids(classes, config.data.class_names)
  model = modeldir.load_ema_params(config, workdir)
  sampler = sampler_lib.Sampler(config, model.params)
  labels, indices = np.repeat(ids, num), np.tile(np.arange(num), len(ids))
  with split_runner.progress_bar(len(labels), "sample") as bar:
    images = sampler.sample(labels, indices, bar.update)
  images = images.reshape(len(ids), num, *images.shape[1:])
  spec = sampler.spec
  settings = {
    "classes": [names[i] for i in ids],
    "num": num,
    "seed": config.seed,
    "sampler": spec.sampler,
    "steps": spec.steps,
    "guidance": spec.guidance,
    "checkpoint": model.description,
  }
  if jax.process_index() == 0:
    os.makedirs(output, exist_ok=True)
    save_grid_png(os.path.join(output, "samples.png"), images)
    write_npz_atomic(
      os.path.join(output, "samples.npz"),
      samples=images,
      classes=np.array(settings["classes"]),
      **{k: np.array(settings[k]) for k in ("seed", "sampler", "steps", "guidance")},
    )
  return settings


def grid(images: np.ndarray, columns: int = 8, border: int = 2) -> np.ndarray:
  """uint8 [rows, cols, C] grid of images [K, N, H, W, C] in [-1, 1]: each of the K groups starts a new row of up to
  `columns` images; images are separated by `border` white pixels."""
  k, n, h, w, c = images.shape
  columns = min(columns, n)
  rows_per_group = math.ceil(n / columns)
  out = np.full((k * rows_per_group * (h + border) + border, columns * (w + border) + border, c), 255, np.uint8)
  pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  for g in range(k):
    for i in range(n):
      r, col = g * rows_per_group + i // columns, i % columns
      top, left = border + r * (h + border), border + col * (w + border)
      out[top : top + h, left : left + w] = pixels[g, i]
  return out


def save_grid_png(path: str, images: np.ndarray) -> None:
  """`grid(images)` as a PNG (small images upscaled by an integer factor, nearest neighbour), written atomically."""
  from PIL import Image

  pixels = grid(images)
  scale = max(1, 128 // images.shape[2])
  pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
  picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  plots.write_atomically(path, lambda file: picture.save(file, format="PNG"))


# --- Explanations -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Classified:
  """The full-budget classification of some images: [N] or [N, C] arrays."""

  votes: np.ndarray
  mean_error: np.ndarray
  prediction: np.ndarray
  vote_share: np.ndarray
  entropy: np.ndarray

  @classmethod
  def from_errors(cls, errors: np.ndarray) -> "Classified":
    """From errors [N, C, K] of every class on all K draws."""
    votes, mean_error = aggregate.votes_from_errors(errors), errors.mean(axis=2)
    prediction = aggregate.vote_prediction(votes, mean_error)
    share = votes[np.arange(len(votes)), prediction] / max(errors.shape[2], 1)
    return cls(votes, mean_error, prediction, share, metrics.vote_entropy(votes))


def choose(select: str, num: int, labels: np.ndarray, classified: Classified | None, seed: int) -> np.ndarray:
  """Positions (into the candidate pool) of the images to explain, sorted.

  first: the first `num`; random: `num` drawn without replacement (seeded); errors: misclassified images, most
  confident (highest vote share) first; uncertain: the lowest vote shares (then highest entropy) first.
  """
  pool = len(labels)
  if select == "first":
    chosen = np.arange(min(num, pool))
  elif select == "random":
    chosen = np.random.default_rng(seed).choice(pool, min(num, pool), replace=False)
  elif select == "errors":
    wrong = np.nonzero(classified.prediction != labels)[0]
    order = np.lexsort((wrong, -classified.vote_share[wrong]))
    chosen = wrong[order][:num]
    if len(chosen) < num:
      log.warning("Only %d of the %d candidate images are misclassified; explaining those", len(chosen), pool)
  elif select == "uncertain":
    order = np.lexsort((np.arange(pool), -classified.entropy, classified.vote_share))
    chosen = order[:num]
  else:
    raise UserError(f"--select={select!r} is not one of {SELECTIONS}")
  return np.sort(chosen)


def explain_split(
  config,
  workdir: str,
  split_name: str,
  output: str,
  num: int,
  select: str = "first",
  judge_workdir: str = "",
  evaluate: bool = False,
  max_examples: int = 0,
) -> dict:
  """Explains `num` images of `split_name` chosen by `select` among its first `max_examples` (0: all) into `output`.

  Returns a summary (and, with `evaluate`, explain_metrics.json's content under "metrics").
  """
  if num <= 0:
    raise UserError(f"--num={num} must be positive")
  if select not in SELECTIONS:
    raise UserError(f"--select={select!r} is not one of {SELECTIONS}")
  config = config.copy_and_resolve_references()
  config.classify.update(adaptive="none", prune_stages=())  # every image gets all K draws (error map, vote share)
  split = pipeline.load_split(config.data, split_name)
  pool = len(split.labels) if max_examples <= 0 else min(max_examples, len(split.labels))
  class_names = list(config.data.class_names)
  model = modeldir.load_ema_params(config, workdir)
  judge = Judge(judge_workdir, class_names) if judge_workdir else None
  classifier = DiffusionClassifier(config, model.params, source=model.description)
  sigma = float(config.explain.smoothing_sigma)

  classified_pool = None
  if select in ("errors", "uncertain"):
    images = split.images[:pool].astype(np.float32) / 127.5 - 1.0
    with split_runner.progress_bar(pool, f"classify {split_name}") as bar:
      classified_pool = Classified.from_errors(classifier.draw_errors(images, np.arange(pool), bar.update))
  chosen = choose(select, num, split.labels[:pool], classified_pool, config.seed)
  n = len(chosen)
  if n == 0:
    raise UserError(f"no images to explain in the first {pool} of split {split_name!r} with --select={select}")
  images = split.images[chosen].astype(np.float32) / 127.5 - 1.0
  labels = split.labels[chosen]
  masks = None if split.masks is None else split.masks[chosen]

  with split_runner.progress_bar(n, f"classify {n} images") as bar:
    if config.explain.error_map:
      errors, pixel_errors = maps.class_pixel_errors(classifier, images, chosen, bar.update)
    else:
      errors, pixel_errors = classifier.draw_errors(images, chosen, bar.update), None
  classified = Classified.from_errors(errors)
  contrast = maps.contrast_classes(classified.mean_error, classified.prediction)

  sampler = sampler_lib.Sampler(config, model.params, classifier.mesh)
  methods = counterfactual.METHODS if evaluate else (config.explain.method,)
  c = len(class_names)
  targets = np.broadcast_to(np.arange(c), (n, c))
  cfs = {}
  for method in methods:
    spec = counterfactual.CounterfactualSpec.from_config(config, method)
    with split_runner.progress_bar(n * c, f"counterfactuals ({METHOD_TITLES[method]})") as bar:
      cfs[method] = counterfactual.counterfactuals(
        sampler, spec, images, chosen, targets, classified.prediction, bar.update
      )

  rows = np.arange(n)
  all_maps = {
    f"counterfactual_{m}": np.stack(
      [maps.counterfactual_difference(images[i], cfs[m][i, contrast[i]], sigma) for i in rows]
    )
    for m in methods
  }
  if pixel_errors is not None:
    all_maps["error_difference"] = np.stack(
      [maps.error_difference(pixel_errors[i], classified.prediction[i], contrast[i], sigma) for i in rows]
    )
  all_maps["intensity"] = np.stack([maps.intensity(image) for image in images])
  judge_prediction = None
  if judge is not None:
    judge_prediction = np.argmax(judge.probabilities(images), axis=1)
    all_maps["grad_cam"] = judge.grad_cam(images, judge_prediction)
    all_maps["input_gradient"] = judge.input_gradient(images, judge_prediction, sigma)

  result = {
    "n": n,
    "split": split_name,
    "select": select,
    "indices": chosen.tolist(),
    "accuracy": float(np.mean(classified.prediction == labels)),
    "checkpoint": model.description,
  }
  if evaluate:
    result["metrics"] = evaluation(
      classifier, judge, images, labels, masks, chosen, classified.prediction, cfs, all_maps, config
    )

  if jax.process_index() == 0:
    entries = []
    for i in rows:
      panel = os.path.join("panels", f"{int(chosen[i]):05d}.png")
      counterfactuals = {
        (class_names[t] if len(methods) == 1 else f"{class_names[t]} ({METHOD_TITLES[m]})"): cfs[m][i, t]
        for m in methods
        for t in range(c)
      }
      title = (
        f"#{int(chosen[i])}: label {class_names[labels[i]]}, prediction {class_names[classified.prediction[i]]} "
        f"(vote share {classified.vote_share[i]:.0%})"
      )
      if judge_prediction is not None:
        title += f"\nResNet judge: {class_names[judge_prediction[i]]}"
      gallery.save_panel_png(
        os.path.join(output, panel),
        images[i],
        counterfactuals,
        {MAP_TITLES[k]: v[i] for k, v in all_maps.items()},
        title,
      )
      entry = {
        "panel": panel,
        "index": int(chosen[i]),
        "label": class_names[labels[i]],
        "prediction": class_names[classified.prediction[i]],
        "vote_share": float(classified.vote_share[i]),
        "correct": bool(classified.prediction[i] == labels[i]),
        "entropy": float(classified.entropy[i]),
      }
      if judge_prediction is not None:
        entry["ResNet judge"] = class_names[judge_prediction[i]]
      entries.append(entry)
    arrays = {
      "index": chosen,
      "label": labels,
      "prediction": classified.prediction,
      "contrast": contrast,
      "vote_share": classified.vote_share,
      "entropy": classified.entropy,
      "images": images,
      "class_names": np.array(class_names),
      **{f"counterfactuals_{m}": cfs[m] for m in methods},
      **{f"map_{k}": v for k, v in all_maps.items()},
    }
    if masks is not None:
      arrays["masks"] = masks
    write_npz_atomic(os.path.join(output, "explanations.npz"), **arrays)
    if evaluate:
      write_json_atomic(os.path.join(output, "explain_metrics.json"), result["metrics"])
    gallery.write_index(output, entries)
  return result


def evaluation(classifier, judge, images, labels, masks, indices, predicted, cfs, all_maps, config) -> dict:
  """explain_metrics.json: per counterfactual method the flip rates (judged by the diffusion classifier and, with a
  judge, by the ResNet) and the proximity |x - x_cf| (inside/outside the lesion mask, or the whole image); per map
  kind, on images with a non-empty mask, the pointing game and the IoU of its top 5 % pixels with the mask."""
  n, c = len(images), len(config.data.class_names)
  has_masks = masks is not None
  pair_image, pair_target = np.nonzero(np.arange(c)[None, :] != predicted[:, None])  # every class but the predicted
  result = {
    "n": n,
    "pairs": int(len(pair_image)),
    "masks": has_masks,
    "t_star": float(config.explain.t_star),
    "guidance": float(config.explain.guidance),
    "steps": int(config.explain.steps),
    "invert_class": config.explain.invert_class,
    "diffusion_accuracy": float(np.mean(predicted == labels)),
    "counterfactuals": {},
  }
  if judge is not None:
    result["judge"] = judge.description
    result["judge_accuracy"] = float(np.mean(np.argmax(judge.probabilities(images), axis=1) == labels))
  for method, edited in cfs.items():
    pairs = edited[pair_image, pair_target]
    with split_runner.progress_bar(len(pairs), f"judge counterfactuals ({METHOD_TITLES[method]})") as bar:
      errors = classifier.draw_errors(pairs, indices[pair_image], bar.update)
    entry = {"flip_rate_diffusion": scores.flip_rate(Classified.from_errors(errors).prediction, pair_target)}
    if judge is not None:
      entry["flip_rate_judge"] = scores.flip_rate(np.argmax(judge.probabilities(pairs), axis=1), pair_target)
    whole = [scores.proximity(images[i], cf)["whole"] for i, cf in zip(pair_image, pairs, strict=True)]
    entry["proximity_whole"] = float(np.mean(whole)) if whole else None
    if has_masks:
      split = [scores.proximity(images[i], cf, masks[i]) for i, cf in zip(pair_image, pairs, strict=True)]
      for region in ("inside", "outside"):
        entry[f"proximity_{region}"] = _nanmean([p[region] for p in split])
    result["counterfactuals"][method] = entry
  key = "proximity_outside" if has_masks else "proximity_whole"
  ranked = sorted((e[key], m) for m, e in result["counterfactuals"].items() if e[key] is not None)
  if ranked:
    closer = ranked[0][1]
    flips = ", ".join(
      f"{METHOD_TITLES[m]} {e[key]:.4f} (flip rate {e['flip_rate_diffusion']:.2f}"
      + (f", judge {e['flip_rate_judge']:.2f}" if "flip_rate_judge" in e else "")
      + ")"
      for m, e in result["counterfactuals"].items()
      if e[key] is not None
    )
    where = "outside the lesion mask" if has_masks else "over the whole image"
    result["closer_method"] = closer
    result["comparison"] = f"mean |x - x_cf| {where}: {flips}; {METHOD_TITLES[closer]} keeps the image closer"
  if has_masks:
    lesion = [i for i in range(n) if np.any(masks[i] > 0)]
    result["images_with_mask"] = len(lesion)
    result["top_fraction"] = scores.TOP_FRACTION
    result["maps"] = {
      kind: {
        "pointing_game": _nanmean([scores.pointing_game(values[i], masks[i]) for i in lesion]),
        "top_fraction_iou": _nanmean([scores.top_fraction_iou(values[i], masks[i]) for i in lesion]),
        "mask_size_precision": _nanmean([scores.mask_size_precision(values[i], masks[i]) for i in lesion]),
      }
      for kind, values in all_maps.items()
    }
  return result


def _nanmean(values) -> float | None:
  """The mean of the finite values (None, valid JSON, when there is none)."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else None
