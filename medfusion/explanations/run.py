"""What medfusion.explain does: explanations of a split's images, in a few named steps.

`explain_split` chooses the images (`choose_images`), then `explain_images` classifies them at the full budget of
config.classify (adaptive modes and pruning are turned off so every image has all K draws for the error-difference
map), makes counterfactuals toward every class (`make_counterfactuals`) and computes the maps (`compute_maps`) into
one `results.Explained`; with --evaluate `evaluate.evaluate` scores it. `write_outputs` writes per image a PNG panel
(gallery.save_panel_png), then OUT/explanations.npz, with --evaluate OUT/explain_metrics.json, and last
OUT/index.html (gallery.write_index). Nothing is written before all images are done; every file is written
atomically. Class-conditional samples (medfusion.sample) are `sampling.py`'s.
"""

import logging
import os

import jax
import numpy as np

from medfusion import modeldir
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.data import pipeline
from medfusion.errors import UserError
from medfusion.evaluation import split_runner
from medfusion.explanations import counterfactual, gallery, maps, saliency
from medfusion.explanations import evaluate as evaluate_lib
from medfusion.explanations import sampler as sampler_lib
from medfusion.explanations.judge import Judge
from medfusion.explanations.results import Classified, Explained
from medfusion.writers import write_json_atomic, write_npz_atomic

log = logging.getLogger("medfusion")

SELECTIONS = ("first", "errors", "uncertain", "random")
METHOD_TITLES = {"partial_noising": "partial noising", "ddim_inversion": "DDIM inversion"}
GRADIENT_MAPS = ("input_gradient", "smoothgrad", "integrated_gradients")  # the judge's, with --evaluate all three
MAP_TITLES = {
  **{f"counterfactual_{m}": f"counterfactual difference ({t})" for m, t in METHOD_TITLES.items()},
  "error_difference": "error difference",
  "grad_cam": "Grad-CAM (ResNet, {layer})",
  "input_gradient": "input gradient (ResNet)",
  "smoothgrad": "SmoothGrad (ResNet)",
  "integrated_gradients": "integrated gradients (ResNet)",
  "blob": "blob detector (no model)",
  "intensity": "intensity (no model)",
}
# What the gallery's legend says about each map.
MAP_LEGEND = {
  "counterfactual": "|x - x_cf| toward the runner-up class: where the diffusion model changes the image to make it "
  "that class. Toward the other class it lights up where evidence is ADDED (a lesion drawn into a healthy image "
  "reads like a lesion location, though the input has none there).",
  "error_difference": "where, pixel by pixel, the denoiser conditioned on the predicted class predicts the noise "
  "better than conditioned on the runner-up, over the classification draws.",
  "grad_cam": "Grad-CAM of the independent ResNet judge at config.explain.grad_cam_layer (upsampled; a coarse "
  "layer gives blocky maps).",
  "gradients": "|d logit / d x| of the judge: plain, averaged over noisy copies (SmoothGrad), or integrated from a "
  "black image.",
  "blob": "no model: bright spots (difference of Gaussian blurs, sigma 1 and 4): the bar a learned map must clear.",
  "intensity": "no model: the image's brightness.",
}


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


def _check_request(num: int, select: str) -> None:
  if num <= 0:
    raise UserError(f"--num={num} must be positive")
  if select not in SELECTIONS:
    raise UserError(f"--select={select!r} is not one of {SELECTIONS}")


def choose_images(classifier, split, split_name: str, num: int, select: str, max_examples: int, seed: int):
  """Positions in the split of the images to explain (`choose` among its first `max_examples`; 0: all)."""
  pool = len(split.labels) if max_examples <= 0 else min(max_examples, len(split.labels))
  classified_pool = None
  if select in ("errors", "uncertain"):
    images = split.images[:pool].astype(np.float32) / 127.5 - 1.0
    with split_runner.progress_bar(pool, f"classify {split_name}") as bar:
      classified_pool = Classified.from_errors(classifier.draw_errors(images, np.arange(pool), bar.update))
  chosen = choose(select, num, split.labels[:pool], classified_pool, seed)
  if len(chosen) == 0:
    raise UserError(f"no images to explain in the first {pool} of split {split_name!r} with --select={select}")
  return chosen


def make_counterfactuals(config, params, mesh, images, indices, prediction, methods) -> dict[str, np.ndarray]:
  """Counterfactuals [N, C, H, W, C] of every image toward every class, by each method."""
  n, c = len(images), config.data.num_classes
  sampler = sampler_lib.Sampler(config, params, mesh)
  targets = np.broadcast_to(np.arange(c), (n, c))
  out = {}
  for method in methods:
    spec = counterfactual.CounterfactualSpec.from_config(config, method)
    with split_runner.progress_bar(n * c, f"counterfactuals ({METHOD_TITLES[method]})") as bar:
      out[method] = counterfactual.counterfactuals(sampler, spec, images, indices, targets, prediction, bar.update)
  return out


def compute_maps(config, images, cfs, pixel_errors, classified, contrast, judge, judge_prediction, every_baseline):
  """Every map [N, H, W] by kind: the counterfactual differences, the error difference, the model-free baselines
  and, with a judge, its Grad-CAM (config.explain.grad_cam_layer; with `every_baseline` also every block as
  grad_cam_<layer>) and gradient maps (input gradient; with `every_baseline` also SmoothGrad and integrated
  gradients)."""
  sigma, rows = float(config.explain.smoothing_sigma), range(len(images))
  out = {
    f"counterfactual_{m}": np.stack([maps.counterfactual_difference(images[i], x[i, contrast[i]], sigma) for i in rows])
    for m, x in cfs.items()
  }
  if pixel_errors is not None:
    out["error_difference"] = np.stack(
      [maps.error_difference(pixel_errors[i], classified.prediction[i], contrast[i], sigma) for i in rows]
    )
  if judge is not None:
    cams = judge.grad_cams(images, judge_prediction)
    layer = judge.layers[saliency.block_index(config.explain.grad_cam_layer, judge.model.config.stage_sizes)]
    out["grad_cam"] = cams[layer]
    if every_baseline:
      out.update({f"grad_cam_{name}": values for name, values in cams.items()})
    for kind in GRADIENT_MAPS if every_baseline else GRADIENT_MAPS[:1]:
      out[kind] = judge.gradient_map(images, judge_prediction, kind, sigma)
  out["blob"] = np.stack([maps.blob(image) for image in images])
  out["intensity"] = np.stack([maps.intensity(image) for image in images])
  return out


def explain_images(config, classifier, params, judge, split, chosen, names: tuple[str, str, str], evaluate: bool):
  """`Explained` for the split's images `chosen`; `names` are (split, select, checkpoint) for the record."""
  images = split.images[chosen].astype(np.float32) / 127.5 - 1.0
  with split_runner.progress_bar(len(chosen), f"classify {len(chosen)} images") as bar:
    if config.explain.error_map:
      errors, pixel_errors = classifier.draw_errors(images, chosen, bar.update, pixels=True)
    else:
      errors, pixel_errors = classifier.draw_errors(images, chosen, bar.update), None
  classified = Classified.from_errors(errors)
  contrast = maps.contrast_classes(classified.mean_error, classified.prediction)
  methods = counterfactual.METHODS if evaluate else (config.explain.method,)
  cfs = make_counterfactuals(config, params, classifier.mesh, images, chosen, classified.prediction, methods)
  judge_prediction = None if judge is None else np.argmax(judge.probabilities(images), axis=1)
  all_maps = compute_maps(config, images, cfs, pixel_errors, classified, contrast, judge, judge_prediction, evaluate)
  split_name, select, checkpoint = names
  return Explained(
    split=split_name,
    select=select,
    checkpoint=checkpoint,
    class_names=list(config.data.class_names),
    indices=chosen,
    images=images,
    labels=split.labels[chosen],
    masks=None if split.masks is None else split.masks[chosen],
    classified=classified,
    contrast=contrast,
    counterfactuals=cfs,
    maps=all_maps,
    judge_prediction=judge_prediction,
  )


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
  _check_request(num, select)
  config = config.copy_and_resolve_references()
  config.classify.update(adaptive="none", prune_stages=())  # every image gets all K draws (error map, vote share)
  split = pipeline.load_split(config.data, split_name)
  model = modeldir.load_ema_params(config, workdir)
  judge = Judge(judge_workdir, config.data.class_names) if judge_workdir else None
  if judge is not None:
    saliency.block_index(config.explain.grad_cam_layer, judge.model.config.stage_sizes)  # before the long work
  classifier = DiffusionClassifier(config, model.params, source=model.description)
  chosen = choose_images(classifier, split, split_name, num, select, max_examples, config.seed)
  names = (split_name, select, model.description)
  ex = explain_images(config, classifier, model.params, judge, split, chosen, names, evaluate)
  result = ex.summary()
  if evaluate:
    result["metrics"] = evaluate_lib.evaluate(ex, classifier, judge, config)
  if jax.process_index() == 0:
    write_outputs(output, ex, config.explain.grad_cam_layer, result.get("metrics"))
  return result


def _panel(ex: Explained, i: int, layer: str) -> tuple[dict, dict, str]:
  """(counterfactuals, maps, title) of image i's panel: the gallery shows the configured Grad-CAM, not every block."""
  names, methods = ex.class_names, list(ex.counterfactuals)
  counterfactuals = {
    (names[t] if len(methods) == 1 else f"{names[t]} ({METHOD_TITLES[m]})"): ex.counterfactuals[m][i, t]
    for m in methods
    for t in range(len(names))
  }
  shown = {MAP_TITLES[k].format(layer=layer): v[i] for k, v in ex.maps.items() if k in MAP_TITLES}
  c = ex.classified
  title = (
    f"#{int(ex.indices[i])}: label {names[ex.labels[i]]}, prediction {names[c.prediction[i]]} "
    f"(vote share {c.vote_share[i]:.0%})"
  )
  if ex.judge_prediction is not None:
    title += f"\nResNet judge: {names[ex.judge_prediction[i]]}"
  return counterfactuals, shown, title


def _entry(ex: Explained, i: int, panel: str) -> dict:
  names, c = ex.class_names, ex.classified
  entry = {
    "panel": panel,
    "index": int(ex.indices[i]),
    "label": names[ex.labels[i]],
    "prediction": names[c.prediction[i]],
    "vote_share": float(c.vote_share[i]),
    "correct": bool(c.prediction[i] == ex.labels[i]),
    "entropy": float(c.entropy[i]),
  }
  if ex.judge_prediction is not None:
    entry["ResNet judge"] = names[ex.judge_prediction[i]]
  return entry


def write_outputs(output: str, ex: Explained, layer: str, metrics: dict | None) -> None:
  """The panels, explanations.npz, explain_metrics.json (with metrics) and, last, index.html."""
  entries = []
  for i in range(len(ex.images)):
    panel = os.path.join("panels", f"{int(ex.indices[i]):05d}.png")
    counterfactuals, shown, title = _panel(ex, i, layer)
    mask = None if ex.masks is None else ex.masks[i]
    gallery.save_panel_png(os.path.join(output, panel), ex.images[i], counterfactuals, shown, title, mask)
    entries.append(_entry(ex, i, panel))
  c = ex.classified
  arrays = {
    "index": ex.indices,
    "label": ex.labels,
    "prediction": c.prediction,
    "contrast": ex.contrast,
    "vote_share": c.vote_share,
    "entropy": c.entropy,
    "images": ex.images,
    "class_names": np.array(ex.class_names),
    **{f"counterfactuals_{m}": v for m, v in ex.counterfactuals.items()},
    **{f"map_{k}": v for k, v in ex.maps.items()},
  }
  if ex.masks is not None:
    arrays["masks"] = ex.masks
  write_npz_atomic(os.path.join(output, "explanations.npz"), **arrays)
  if metrics is not None:
    write_json_atomic(os.path.join(output, "explain_metrics.json"), metrics)
  legend = {MAP_TITLES[k].format(layer=layer): _legend(k) for k in ex.maps if k in MAP_TITLES}
  gallery.write_index(output, entries, legend, gallery.score_tables(metrics, MAP_TITLES, layer) if metrics else None)


def _legend(kind: str) -> str:
  if kind.startswith("counterfactual"):
    return MAP_LEGEND["counterfactual"]
  return MAP_LEGEND.get(kind, MAP_LEGEND["gradients"])
