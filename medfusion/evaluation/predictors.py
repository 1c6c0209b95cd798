"""The classifier a scoring run calls, for either model kind: the diffusion classifier or a ResNet.

Batch scoring (split_scoring.py) and in-memory scoring (`score_in_memory`, e.g. of corrupted images) run one path
and ask the predictor only what differs between the kinds: how a block of images is scored, what is kept per image
(in the resumable partial CSV too), the logits a temperature scales, the per-image columns and metrics.json's rows,
and the columns of scores.csv. The diffusion classifier has two rows (`vote`, `mean`; a third, `weighted`, with a
stored timestep weighting), a ResNet one (`softmax`); columns that do not apply to a ResNet (votes, mean errors,
vote share, margin, NFE) are left out.
"""

from typing import TYPE_CHECKING

import numpy as np

from medfusion import metrics, modeldir, models, sharding
from medfusion.classify import kernel
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.data import pipeline
from medfusion.errors import ConfigError, UserError
from medfusion.evaluation import report, resnet_inference, split_runner
from medfusion.evaluation.report import SoftmaxTotals, Totals, WeightedTotals

if TYPE_CHECKING:  # imported where a weighting is used: it pulls in scipy.optimize, which plain scoring never needs
  from medfusion.classify.weighting import TimestepWeighting

_FORMATS = {"mean_error": ".8g", "prob": ".8g", "vote_share": ".6g", "entropy": ".6g", "margin": ".6g"}


def _formatted(values, what: str) -> list[str]:
  return [format(v, _FORMATS[what]) for v in values]


class DiffusionPredictor:
  """The diffusion classifier of config.classify; with a timestep weighting (`weighting`, from the model folder:
  `make`) every class is evaluated on every draw and a third row, `weighted`, scores the weighting's logits."""

  kind = "diffusion"

  def __init__(self, config, model, batch_size: int, weighting: "TimestepWeighting | None" = None):
    if batch_size != config.classify.batch_size:
      config = config.copy_and_resolve_references()
      config.classify.batch_size = batch_size
    self.config, self.batch_size, self.weighting = config, batch_size, weighting
    self.classifier = DiffusionClassifier(config, model.params, source=model.description)
    self.rows = ("vote", "mean") if weighting is None else ("vote", "mean", "weighted")

  def settings(self) -> dict:
    """What the scores depend on besides the checkpoint, data and seed."""
    return {"classify": self.config.classify.to_dict()} | (
      {"weighting": self.weighting.to_json()} if self.weighting else {}
    )

  def score(self, images, index, label, progress=None) -> Totals:
    if self.weighting is None:
      return Totals.from_tally(self.classifier.score(images, index, progress), index, label)
    errors = self.classifier.draw_errors(images, index, progress)  # [b, C, K]: every class on every draw
    _, t = kernel.image_draws(self.classifier.kernel_spec, np.asarray(index))
    totals = totals_from_errors(errors, index, label)
    logits = self.weighting.logits(errors, np.asarray(t))
    return WeightedTotals(**vars(totals), weighted_logits=logits)

  def report(self, totals: Totals, temperature: float, prior=None) -> tuple[dict, dict]:
    """(per-image columns, metrics.json's body)."""
    columns = report.per_image(totals, temperature, prior)
    if self.weighting is not None:
      columns.update(report.weighted_per_image(totals, prior))
    names = list(self.config.data.class_names)
    return columns, report.split_metrics(totals, columns, names, self.config.classify.positive_class)

  @staticmethod
  def curves(totals: Totals, columns: dict) -> dict:
    return report.risk_coverage_curves(totals, columns)

  def partial_header(self, class_names) -> list[str]:
    votes, errors = [f"votes_{c}" for c in class_names], [f"mean_error_{c}" for c in class_names]
    weighted = [f"weighted_logit_{c}" for c in class_names] if self.weighting is not None else []
    return ["index", "label", *votes, *errors, *weighted, "draws", "nfe"]

  def partial_rows(self, totals: Totals) -> list[list]:
    weighted = totals.weighted_logits if self.weighting is not None else np.zeros((len(totals.index), 0))
    return [
      [int(totals.index[i]), int(totals.label[i]), *map(int, totals.votes[i])]
      + [repr(float(e)) for e in (*totals.mean_error[i], *weighted[i])]
      + [int(totals.draws[i]), int(totals.nfe[i])]
      for i in range(len(totals.index))
    ]

  def from_partial_rows(self, rows: np.ndarray, num_classes: int) -> Totals:
    """Totals of the partial CSV's rows (strings [M, columns])."""
    c = num_classes
    as_int = rows[:, [0, 1, *range(2, 2 + c), -2, -1]].astype(np.int64)
    totals = Totals(
      index=as_int[:, 0],
      label=as_int[:, 1],
      votes=as_int[:, 2 : 2 + c],
      mean_error=rows[:, 2 + c : 2 + 2 * c].astype(np.float64),
      draws=as_int[:, -2],
      nfe=as_int[:, -1],
    )
    if self.weighting is None:
      return totals
    logits = rows[:, 2 + 2 * c : 2 + 3 * c].astype(np.float64)
    return WeightedTotals(**vars(totals), weighted_logits=logits)

  def table(self, class_names, totals: Totals, columns: dict) -> tuple[list[str], list[list]]:
    """scores.csv's header and rows, one per image."""
    weighted = self.weighting is not None
    header = ["index", "label", "prediction", "prediction_mean", *(["prediction_weighted"] if weighted else [])]
    probs = ("prob", "prob_weighted") if weighted else ("prob",)
    header += [f"{what}_{c}" for what in ("votes", "mean_error", *probs) for c in class_names]
    header += ["vote_share", "entropy", "margin", "nfe"]
    rows = [
      [totals.index[i], totals.label[i], columns["prediction"][i], columns["prediction_mean"][i]]
      + ([columns["prediction_weighted"][i]] if weighted else [])
      + list(totals.votes[i])
      + _formatted(totals.mean_error[i], "mean_error")
      + [v for what in probs for v in _formatted(columns[what][i], "prob")]
      + [format(columns[k][i], _FORMATS[k]) for k in ("vote_share", "entropy", "margin")]
      + [totals.nfe[i]]
      for i in range(len(totals.index))
    ]
    return header, rows


def totals_from_errors(errors: np.ndarray, index, label) -> Totals:
  """The full-budget Totals of an error tensor [N, C, K]: each draw votes for its lowest-error class (exact ties
  to the lower class, as the classifier's tally)."""
  n, c, k = errors.shape
  votes = (np.argmin(errors, axis=1)[:, None, :] == np.arange(c)[None, :, None]).sum(axis=2)
  return Totals(np.asarray(index), np.asarray(label), votes, errors.mean(axis=2), np.full(n, k), np.full(n, c * k))


class ResNetPredictor:
  """A ResNet's softmax probabilities (evaluation/resnet_inference.py)."""

  kind = "resnet"
  rows = ("softmax",)

  def __init__(self, config, model, batch_size: int, mesh=None):
    self.config, self.batch_size, self.variables = config, batch_size, model.params
    self.mesh = mesh or sharding.make_mesh()
    self.step = resnet_inference.make_predict_step(config, self.mesh)

  def settings(self) -> dict:
    return {}

  def score(self, images, index, label, progress=None) -> SoftmaxTotals:
    probs = resnet_inference.predict_images(
      self.step, self.variables, images, self.batch_size, self.mesh, self.config.data.num_classes
    )
    if progress is not None:
      progress(len(index))
    return SoftmaxTotals(np.asarray(index), np.asarray(label), probs)

  def report(self, totals: SoftmaxTotals, temperature: float, prior=None) -> tuple[dict, dict]:
    del prior  # the ResNet learned the training split's class frequencies
    columns = report.softmax_per_image(totals, temperature)
    names = list(self.config.data.class_names)
    return columns, report.softmax_split_metrics(totals, columns, names, self.config.classify.positive_class)

  @staticmethod
  def curves(totals: SoftmaxTotals, columns: dict) -> dict:
    return report.softmax_risk_coverage(totals, columns)

  @staticmethod
  def partial_header(class_names) -> list[str]:
    return ["index", "label", *[f"p_{c}" for c in class_names]]

  @staticmethod
  def partial_rows(totals: SoftmaxTotals) -> list[list]:
    return [
      [int(totals.index[i]), int(totals.label[i]), *[repr(float(p)) for p in totals.probs[i]]]
      for i in range(len(totals.index))
    ]

  @staticmethod
  def from_partial_rows(rows: np.ndarray, num_classes: int) -> SoftmaxTotals:
    del num_classes
    as_int = rows[:, :2].astype(np.int64)
    return SoftmaxTotals(index=as_int[:, 0], label=as_int[:, 1], probs=rows[:, 2:].astype(np.float64))

  @staticmethod
  def table(class_names, totals: SoftmaxTotals, columns: dict) -> tuple[list[str], list[list]]:
    header = ["index", "label", "prediction", *[f"prob_{c}" for c in class_names], "entropy"]
    rows = [
      [totals.index[i], totals.label[i], columns["prediction"][i]]
      + _formatted(columns["prob"][i], "prob")
      + [format(columns["entropy"][i], _FORMATS["entropy"])]
      for i in range(len(totals.index))
    ]
    return header, rows


def batch_size(config) -> int:
  """The model's scoring batch: config.classify.batch_size; a ResNet's classification evaluator batch size."""
  if models.model_kind(config) == "diffusion":
    return config.classify.batch_size
  return next(e.batch_size for e in config.evals.values() if e.type == "classification")


def make(config, model, batch_size_: int | None = None, workdir: str = ""):
  """The predictor of `config`'s model kind for `model` (modeldir.LoadedModel), scoring `batch_size_` images per
  batch (default: `batch_size(config)`); with `config.classify.weighting`, the weighting stored in `workdir` for
  this checkpoint and these settings (medfusion.sweep --store_weighting fits it)."""
  size = batch_size(config) if batch_size_ is None else batch_size_
  if models.model_kind(config) != "diffusion":
    return ResNetPredictor(config, model, size)
  return DiffusionPredictor(config, model, size, _stored_weighting(config, workdir, model.step))


def _stored_weighting(config, workdir: str, step: int) -> "TimestepWeighting | None":
  from medfusion.classify.weighting import TimestepWeighting

  c = config.classify
  if c.weighting == "none":
    return None
  if c.adaptive != "none" or len(c.prune_stages):
    raise ConfigError(
      f"config.classify.weighting={c.weighting!r} needs every class on every draw: set classify.adaptive=none and "
      "classify.prune_stages=()"
    )
  stored = modeldir.stored_weighting(workdir, modeldir.weighting_key(config, step)) if workdir else None
  if stored is None:
    raise UserError(
      f"config.classify.weighting={c.weighting!r}: none is stored in {workdir or 'the model folder'} for step {step} "
      f"and these classify settings; fit one with python -m medfusion.sweep --workdir={workdir or 'W'} --split=val "
      f"--config.classify.weighting={c.weighting} --store_weighting (and the same classify settings)"
    )
  return TimestepWeighting.from_json(stored)


def score_in_memory(
  config, model, split: pipeline.Split, temperature: float | None = None, progress=None, workdir: str = ""
):
  """(totals, metrics) of every image of an in-memory `split` (uint8 images at the model resolution, labels) with
  `model` (modeldir.LoadedModel) of either kind: the totals batch scoring keeps and metrics.json's rows and `n`,
  plus the `temperature` used (None: fitted on these images, as the training evaluator does). `workdir`: where a
  timestep weighting is stored (`make`)."""
  predictor = make(config, model, workdir=workdir)
  n = len(split.labels)
  totals = split_runner.collect(
    split_runner.run_blocks(predictor.score, split, n, 4 * predictor.batch_size, (), progress)
  )
  if temperature is None:
    temperature = metrics.fit_temperature(totals.logits(), totals.label)
  _, result = predictor.report(totals, temperature)
  return totals, {**result, "temperature": float(temperature)}
