"""The MedMNIST-C corruption benchmark: a split scored clean and under every corruption x severity, for any model.

The split's images at their stored size (the MedMNIST .npz's 28x28 for source 'npz'; the model resolution for
other sources) are corrupted under `corruptions.PROTOCOL`, then fitted to each model's resolution as clean images
are. A diffusion workdir is scored with its classify config (both aggregators, `vote` and `mean`); a ResNet workdir
with its softmax (`softmax`). With a reference model (`compare`), both see the same corrupted images.

Each finished (model, corruption, severity) cell is written atomically to OUT/cells/<model>/<cell>.npz (its
per-image totals or probabilities, and with `store_errors` the diffusion errors [N, C, K] and timesteps of every
draw, so any stopping rule can be replayed per corruption without the network); a rerun with the same settings
skips finished cells. Everything in OUT/shift.json and OUT/shift.png is computed from the stored cells.

Summary (MedMNIST-C): per corruption the balanced error averaged over the severities, BE_c; its relative form
BE_c - BE_clean; each normalised by the reference model's (BE_c / BE_c^ref and (BE_c - BE_clean) /
(BE_c^ref - BE_clean^ref), as MedMNIST-C normalises by AlexNet's), and their means over corruptions.
"""

import dataclasses
import json
import logging
import os

import numpy as np

from medfusion import metrics, modeldir, models, stored_config
from medfusion.data import corruptions, pipeline
from medfusion.errors import Interrupted, UserError
from medfusion.evaluation import predictors, split_runner
from medfusion.evaluation.report import SoftmaxTotals, Totals
from medfusion.writers import write_atomically, write_json_atomic, write_npz_atomic

log = logging.getLogger("medfusion")

REPORTED = ("accuracy", "balanced_accuracy", "auc", "ece", "aurc", "misclassification_auroc")
PRIMARY = {"diffusion": "vote", "resnet": "softmax"}  # the aggregator a model is normalised by as a reference
CLEAN = "clean"
RESAMPLED = "resampled"  # the control: the protocol's resampling without a corruption


@dataclasses.dataclass(frozen=True)
class Cell:
  """One condition of the benchmark: the clean split (severity 0) or one corruption at one severity."""

  corruption: str
  severity: int = 0

  @property
  def key(self) -> str:
    return self.corruption if self.corruption in (CLEAN, RESAMPLED) else f"{self.corruption}_{self.severity}"


def parse_cells(dataset: str, corruption_list: str, severity_list: str) -> list[Cell]:
  """The clean and resampled cells, then every requested corruption x severity; UserError naming a bad name or
  severity."""
  names = [c.strip() for c in corruption_list.split(",") if c.strip()] or list(corruptions.PARAMETERS[dataset])
  for name in names:
    if name not in corruptions.PARAMETERS[dataset]:
      raise UserError(
        f"--corruptions: {name!r} is not a {dataset} corruption; "
        f"choose from {', '.join(corruptions.PARAMETERS[dataset])}"
      )
  try:
    severities = sorted({int(s) for s in severity_list.split(",") if s.strip()})
  except ValueError:
    raise UserError(f"--severities={severity_list!r}: expected comma-separated integers in 1..5") from None
  bad = [s for s in severities if s not in corruptions.SEVERITIES]
  if bad or not severities:
    raise UserError(f"--severities={severity_list!r}: severities must lie in 1..5 (got {bad or 'none'})")
  return [Cell(CLEAN), Cell(RESAMPLED)] + [Cell(name, s) for name in names for s in severities]


def native_split(data_config, split_name: str) -> pipeline.Split:
  """The split at its stored size: the .npz arrays as they are for source 'npz' (MedMNIST's 28x28), else the split
  as loaded (already at the model resolution). Images are uint8 [N, H, W, C]."""
  if data_config.source != "npz":
    return pipeline.load_split(data_config, split_name)
  try:
    with np.load(data_config.npz) as arrays:
      images, labels = arrays[f"{split_name}_images"], arrays[f"{split_name}_labels"].reshape(-1).astype(np.int32)
  except KeyError:
    raise UserError(f"{data_config.npz}: no split '{split_name}'") from None
  except OSError as e:
    raise UserError(f"{data_config.npz}: cannot read ({e})") from None
  return pipeline.Split(images if images.ndim == 4 else images[..., None], labels, None)


# --- models ----------------------------------------------------------------------------------------------------------


class ModelUnderTest:
  """A workdir of either kind through its predictor (evaluation/predictors.py): per cell its totals (a diffusion
  model's votes and mean errors, a ResNet's probabilities) and, for a diffusion model with `store_errors`, every
  draw's errors [N, C, K] and timesteps [N, K] (the full budget, replayable under any stopping rule)."""

  def __init__(self, config, workdir: str, store_errors: bool):
    self.config, self.workdir = config, workdir
    if models.model_kind(config) == "diffusion" and config.classify.weighting != "none":
      raise UserError(
        f"medfusion.shift scores the vote and mean rows only (config.classify.weighting={config.classify.weighting!r}"
        " for --workdir); replay a weighting on the cells' --errors draws instead"
      )
    self.loaded = modeldir.load(config, workdir)
    self.predictor = predictors.make(config, self.loaded)
    self.kind = self.predictor.kind
    self.store_errors = store_errors and self.kind == "diffusion"
    self.totals_type = Totals if self.kind == "diffusion" else SoftmaxTotals
    self.temperature, self.temperature_source = modeldir.temperature(config, workdir, self.loaded.step)

  def fingerprint(self) -> dict:
    return {
      "workdir": os.path.abspath(self.workdir),
      "kind": self.kind,
      "checkpoint_step": self.loaded.step,
      **self.predictor.settings(),
      "data": {k: self.config.data[k] for k in ("image_size", "fit", "num_channels")},
      "seed": self.config.seed,
      "errors": self.store_errors,
    }

  def score(self, images: np.ndarray, labels: np.ndarray, progress) -> dict:
    """The arrays kept for one cell (uint8 images at the model resolution)."""
    split, n = pipeline.Split(images, labels, None), len(labels)
    if self.store_errors:
      errors, t = split_runner.draw_errors(self.predictor.classifier, split, n, progress)
      totals = predictors.totals_from_errors(errors, np.arange(n), labels)
      return {**dataclasses.asdict(totals), "errors": errors.astype(np.float32), "t": t.astype(np.float32)}
    blocks = split_runner.run_blocks(self.predictor.score, split, n, 4 * self.predictor.batch_size, (), progress)
    return dataclasses.asdict(split_runner.collect(blocks))

  def metrics(self, cells: dict[str, dict]) -> tuple[dict, dict]:
    """({cell: {row: metrics}}, notes) from the stored arrays. The temperature is the model's stored fit for these
    settings, else one fitted on this run's clean images; it changes the ECE of probability rows only."""
    fields = [f.name for f in dataclasses.fields(self.totals_type)]
    totals = {key: self.totals_type(**{f: arrays[f] for f in fields}) for key, arrays in cells.items()}
    temperature, source = self.temperature, self.temperature_source
    if temperature is None:
      clean = totals[CLEAN]
      temperature = metrics.fit_temperature(clean.logits(), clean.label)
      source = f"fitted on the {len(clean.label)} clean images of this run"
    result = {}
    for key, tot in totals.items():
      _, full = self.predictor.report(tot, temperature)
      nfe = float(np.mean(tot.nfe)) if self.kind == "diffusion" else 1.0
      result[key] = {row: {**{m: full[row][m] for m in REPORTED}, "nfe_per_image": nfe} for row in self.predictor.rows}
    return result, {"temperature": float(temperature), "temperature_source": source}


def compare_config(workdir: str):
  """The config a --compare workdir was trained with (its config.json)."""
  if not os.path.isdir(workdir):
    raise UserError(f"--compare {workdir} does not exist")
  try:
    return stored_config.get_config(workdir)
  except ValueError as e:
    raise UserError(f"--compare: {e}") from None


# --- the run ---------------------------------------------------------------------------------------------------------


class CellStore:
  """OUT/cells/<name>/: one .npz per finished cell and the model's fingerprint; another model's cells are an error."""

  def __init__(self, output: str, name: str, fingerprint: dict):
    self.folder = os.path.join(output, "cells", name)
    path = os.path.join(self.folder, "fingerprint.json")
    fingerprint = json.loads(json.dumps(fingerprint, default=list))
    if os.path.exists(path):
      with open(path) as f:
        if json.load(f) != fingerprint:
          raise UserError(
            f"{self.folder} holds cells scored with other settings (model, checkpoint, split, classify config or "
            "corruption set); use another --output or delete it"
          )
    else:
      os.makedirs(self.folder, exist_ok=True)
      write_json_atomic(path, fingerprint)

  def path(self, cell: Cell) -> str:
    return os.path.join(self.folder, f"{cell.key}.npz")

  def done(self, cell: Cell) -> bool:
    return os.path.exists(self.path(cell))

  def save(self, cell: Cell, arrays: dict) -> None:
    write_npz_atomic(self.path(cell), **arrays)

  def load(self, cell: Cell) -> dict:
    with np.load(self.path(cell)) as stored:
      return {k: stored[k] for k in stored.files}


def cell_images(native: pipeline.Split, cell: Cell, dataset: str, seed: int, n: int) -> np.ndarray:
  """The first n native images of the split under one cell's corruption (the clean images for the clean cell)."""
  if cell.corruption == CLEAN:
    return native.images[:n]
  if cell.corruption == RESAMPLED:
    return np.stack([corruptions.resample(image) for image in native.images[:n]])
  corruption = corruptions.Corruption(dataset, cell.corruption, cell.severity)
  return corruptions.corrupt_images(native.images[:n], np.arange(n), corruption, seed)


def run(
  config,
  workdir: str,
  split_name: str,
  output: str,
  *,
  max_examples: int = 0,
  corruption_list: str = "",
  severity_list: str = "1,2,3,4,5",
  compare: str = "",
  store_errors: bool = False,
  dataset: str = "",
) -> dict:
  """Scores every cell for the model (and the --compare model), then writes shift.json and shift.png."""
  if max_examples < 0:
    raise UserError(f"--max_examples={max_examples} must be positive (0: the whole split)")
  dataset = dataset or corruptions.corruption_set(config.data)
  if dataset not in corruptions.SETS:
    raise UserError(f"--corruption_set={dataset!r} is not one of {corruptions.SETS}")
  cells = parse_cells(dataset, corruption_list, severity_list)
  configs = {"model": config}
  if compare:
    configs["reference"] = compare_config(compare)
    if configs["reference"].data.class_names != config.data.class_names:
      raise UserError(
        f"--compare {compare} classifies {tuple(configs['reference'].data.class_names)}, not "
        f"{tuple(config.data.class_names)}"
      )
  native = native_split(config.data, split_name)
  n = len(native.labels) if max_examples == 0 else min(max_examples, len(native.labels))
  labels = native.labels[:n]
  models, stores = {}, {}
  for name, model_config in configs.items():
    model = ModelUnderTest(model_config, workdir if name == "model" else compare, store_errors)
    fingerprint = {**model.fingerprint(), "split": split_name, "n": n, "corruption_set": dataset}
    fingerprint["corruption_seed"] = config.seed
    models[name], stores[name] = model, CellStore(output, name, fingerprint)
  try:
    for cell in cells:
      todo = [name for name in models if not stores[name].done(cell)]
      if not todo:
        continue
      images = cell_images(native, cell, dataset, config.seed, n)
      for name in todo:
        model = models[name]
        fitted = pipeline.fit_images(images, model.config.data, f"{split_name} ({cell.key})")
        with split_runner.progress_bar(n, f"{name} {cell.key}") as bar:
          arrays = model.score(fitted, labels, bar.update)
        stores[name].save(cell, arrays)
  except KeyboardInterrupt:
    raise Interrupted(f"finished cells are kept in {output}/cells; run the same command again to continue") from None

  result = {
    "split": split_name,
    "n": n,
    "corruption_set": dataset,
    "protocol": corruptions.PROTOCOL,
    "corruption_seed": config.seed,
    "severities": sorted({c.severity for c in cells if c.severity}),
    "corruptions": list(dict.fromkeys(c.corruption for c in cells if c.severity)),
    "models": {},
    "results": {},
  }
  for name, model in models.items():
    scores, notes = model.metrics({cell.key: stores[name].load(cell) for cell in cells})
    result["models"][name] = {**model.fingerprint(), **notes}
    result["results"][name] = scores
  result["summary"] = summary(result)
  write_json_atomic(os.path.join(output, "shift.json"), result)
  save_plot(result, os.path.join(output, "shift.png"))
  return result


# --- summary and plot ------------------------------------------------------------------------------------------------


def _mean_balanced_errors(scores: dict, corruption_names, severities, aggregator: str) -> dict:
  """{corruption: balanced error averaged over severities} and the clean balanced error, for one aggregator."""
  error = {
    c: float(np.mean([1 - scores[f"{c}_{s}"][aggregator]["balanced_accuracy"] for s in severities]))
    for c in corruption_names
  }
  return error, 1 - scores[CLEAN][aggregator]["balanced_accuracy"]


def _ratio(a: float, b: float):
  return float(a / b) if b > 0 else None


def summary(result: dict) -> dict:
  """Per model and aggregator: clean balanced error, BE_c and BE_c - BE_clean per corruption and their means, and
  with a reference model the normalised forms (divided by the reference's primary aggregator's)."""
  names, severities = result["corruptions"], result["severities"]
  reference = None
  if "reference" in result["results"]:
    ref_scores = result["results"]["reference"]
    ref_agg = PRIMARY[result["models"]["reference"]["kind"]]
    reference = _mean_balanced_errors(ref_scores, names, severities, ref_agg)
  out = {}
  for model, scores in result["results"].items():
    out[model] = {}
    for agg in scores[CLEAN]:
      error, clean = _mean_balanced_errors(scores, names, severities, agg)
      row = {
        "clean_balanced_error": clean,
        "resampled_balanced_error": 1 - scores[RESAMPLED][agg]["balanced_accuracy"],
        "balanced_error": error,
        "relative_balanced_error": {c: e - clean for c, e in error.items()},
        "mean_balanced_error": float(np.mean(list(error.values()))),
        "mean_relative_balanced_error": float(np.mean([e - clean for e in error.values()])),
      }
      if reference is not None:
        ref_error, ref_clean = reference
        row["normalised_balanced_error"] = {c: _ratio(error[c], ref_error[c]) for c in names}
        row["normalised_relative_balanced_error"] = {
          c: _ratio(error[c] - clean, ref_error[c] - ref_clean) for c in names
        }
        for form in ("normalised_balanced_error", "normalised_relative_balanced_error"):
          values = [v for v in row[form].values() if v is not None]
          row[f"mean_{form}"] = float(np.mean(values)) if values else None
      out[model][agg] = row
  return out


def save_plot(result: dict, path: str) -> None:
  """Balanced error against severity (0: clean), one panel per corruption, every model and aggregator."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  names, severities = result["corruptions"], result["severities"]
  cols = min(4, max(1, len(names)))
  rows = -(-max(1, len(names)) // cols)
  figure = Figure(figsize=(3.2 * cols, 2.6 * rows), dpi=110)
  FigureCanvasAgg(figure)
  axes = figure.subplots(rows, cols, squeeze=False, sharey=True)
  for i, name in enumerate(names):
    ax = axes[i // cols][i % cols]
    for model, scores in result["results"].items():
      label = os.path.basename(result["models"][model]["workdir"].rstrip("/")) or model
      for agg in scores[CLEAN]:
        y = [1 - scores[CLEAN][agg]["balanced_accuracy"]]
        y += [1 - scores[f"{name}_{s}"][agg]["balanced_accuracy"] for s in severities]
        ax.plot([0, *severities], y, marker="o", markersize=3, label=f"{label} ({model}, {agg})")
    ax.set_title(name, fontsize=9)
    ax.set_xticks([0, *severities])
    ax.grid(True, alpha=0.3)
    if i % cols == 0:
      ax.set_ylabel("balanced error")
    if i // cols == rows - 1:
      ax.set_xlabel("severity (0: clean)")
  for j in range(len(names), rows * cols):
    axes[j // cols][j % cols].set_visible(False)
  handles, labels = axes[0][0].get_legend_handles_labels()
  figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
  figure.suptitle(f"{result['split']} (n={result['n']}) under MedMNIST-C ({result['corruption_set']})", fontsize=10)
  figure.tight_layout(rect=(0, 0.06 + 0.02 * ((len(labels) - 1) // 3), 1, 0.96))
  write_atomically(path, lambda f: figure.savefig(f, format="png"))
