"""The classifier a scoring run calls, for either model kind: the diffusion classifier or a ResNet.

Batch scoring (split_scoring.py) and in-memory scoring (`score_in_memory`, e.g. of corrupted images) run one path
and ask the predictor only what differs between the kinds: how a block of images is scored, what is kept per image
(in the resumable partial CSV too), the logits a temperature scales, the per-image columns and metrics.json's rows,
and the columns of scores.csv. The diffusion classifier has two rows (`vote`, `mean`), a ResNet one (`softmax`);
columns that do not apply to a ResNet (votes, mean errors, vote share, margin, NFE) are left out.
"""

import numpy as np

from medfusion import metrics, models, sharding
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.data import pipeline
from medfusion.evaluation import report, resnet_inference, split_runner
from medfusion.evaluation.report import SoftmaxTotals, Totals

_FORMATS = {"mean_error": ".8g", "prob": ".8g", "vote_share": ".6g", "entropy": ".6g", "margin": ".6g"}


def _formatted(values, what: str) -> list[str]:
  return [format(v, _FORMATS[what]) for v in values]


class DiffusionPredictor:
  """The diffusion classifier of config.classify."""

  kind = "diffusion"
  rows = ("vote", "mean")

  def __init__(self, config, model, batch_size: int):
    if batch_size != config.classify.batch_size:
      config = config.copy_and_resolve_references()
      config.classify.batch_size = batch_size
    self.config, self.batch_size = config, batch_size
    self.classifier = DiffusionClassifier(config, model.params, source=model.description)

  def settings(self) -> dict:
    """What the scores depend on besides the checkpoint, data and seed."""
    return {"classify": self.config.classify.to_dict()}

  def score(self, images, index, label, progress=None) -> Totals:
    return Totals.from_tally(self.classifier.score(images, index, progress), index, label)

  def report(self, totals: Totals, temperature: float, prior=None) -> tuple[dict, dict]:
    """(per-image columns, metrics.json's body)."""
    columns = report.per_image(totals, temperature, prior)
    names = list(self.config.data.class_names)
    return columns, report.split_metrics(totals, columns, names, self.config.classify.positive_class)

  @staticmethod
  def curves(totals: Totals, columns: dict) -> dict:
    return report.risk_coverage_curves(totals, columns)

  @staticmethod
  def partial_header(class_names) -> list[str]:
    votes, errors = [f"votes_{c}" for c in class_names], [f"mean_error_{c}" for c in class_names]
    return ["index", "label", *votes, *errors, "draws", "nfe"]

  @staticmethod
  def partial_rows(totals: Totals) -> list[list]:
    return [
      [int(totals.index[i]), int(totals.label[i]), *map(int, totals.votes[i])]
      + [repr(float(e)) for e in totals.mean_error[i]]
      + [int(totals.draws[i]), int(totals.nfe[i])]
      for i in range(len(totals.index))
    ]

  @staticmethod
  def from_partial_rows(rows: np.ndarray, num_classes: int) -> Totals:
    """Totals of the partial CSV's rows (strings [M, columns])."""
    c = num_classes
    as_int = rows[:, [0, 1, *range(2, 2 + c), -2, -1]].astype(np.int64)
    return Totals(
      index=as_int[:, 0],
      label=as_int[:, 1],
      votes=as_int[:, 2 : 2 + c],
      mean_error=rows[:, 2 + c : 2 + 2 * c].astype(np.float64),
      draws=as_int[:, -2],
      nfe=as_int[:, -1],
    )

  @staticmethod
  def table(class_names, totals: Totals, columns: dict) -> tuple[list[str], list[list]]:
    """scores.csv's header and rows, one per image."""
    header = ["index", "label", "prediction", "prediction_mean"]
    header += [f"{what}_{c}" for what in ("votes", "mean_error", "prob") for c in class_names]
    header += ["vote_share", "entropy", "margin", "nfe"]
    rows = [
      [totals.index[i], totals.label[i], columns["prediction"][i], columns["prediction_mean"][i]]
      + list(totals.votes[i])
      + _formatted(totals.mean_error[i], "mean_error")
      + _formatted(columns["prob"][i], "prob")
      + [format(columns[k][i], _FORMATS[k]) for k in ("vote_share", "entropy", "margin")]
      + [totals.nfe[i]]
      for i in range(len(totals.index))
    ]
    return header, rows


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
    return columns, report.softmax_split_metrics(totals, columns, names)

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


def make(config, model, batch_size_: int | None = None):
  """The predictor of `config`'s model kind for `model` (modeldir.LoadedModel), scoring `batch_size_` images per
  batch (default: `batch_size(config)`)."""
  size = batch_size(config) if batch_size_ is None else batch_size_
  if models.model_kind(config) == "diffusion":
    return DiffusionPredictor(config, model, size)
  return ResNetPredictor(config, model, size)


def score_in_memory(config, model, split: pipeline.Split, temperature: float | None = None, progress=None):
  """(totals, metrics) of every image of an in-memory `split` (uint8 images at the model resolution, labels) with
  `model` (modeldir.LoadedModel) of either kind: the totals batch scoring keeps and metrics.json's rows and `n`,
  plus the `temperature` used (None: fitted on these images, as the training evaluator does)."""
  predictor = make(config, model)
  n = len(split.labels)
  totals = split_runner.collect(
    split_runner.run_blocks(predictor.score, split, n, 4 * predictor.batch_size, (), progress)
  )
  if temperature is None:
    temperature = metrics.fit_temperature(totals.logits(), totals.label)
  _, result = predictor.report(totals, temperature)
  return totals, {**result, "temperature": float(temperature)}
