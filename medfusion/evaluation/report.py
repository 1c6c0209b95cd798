"""From a classifier's per-image totals to predictions, uncertainty scores and split metrics.

Pure functions of numpy arrays, shared by batch scoring (scores.csv, metrics.json) and the evaluator that runs
during training, so both report exactly the same quantities. The diffusion classifier's `Totals` give two rows
(aggregators) of metrics, `vote` and `mean`; a ResNet's `SoftmaxTotals` one, `softmax`, with the same metrics.
"""

import dataclasses

import numpy as np

from medfusion import metrics
from medfusion.classify import aggregate
from medfusion.classify.classifier import Tally

COVERAGES = (0.5, 0.8, 0.9)


@dataclasses.dataclass
class Totals:
  """What is kept per image after classification: [N] or [N, C] arrays."""

  index: np.ndarray
  label: np.ndarray
  votes: np.ndarray  # [N, C] draws won per class
  mean_error: np.ndarray  # [N, C] mean error per class over its evaluated draws (+inf where pruned)
  draws: np.ndarray  # draws evaluated
  nfe: np.ndarray  # network evaluations

  @classmethod
  def from_tally(cls, tally: Tally, index, label) -> "Totals":
    return cls(np.asarray(index), np.asarray(label), tally.votes, tally.mean_errors, tally.draws, tally.nfe)

  def logits(self) -> np.ndarray:
    """What a temperature scales: minus the mean errors."""
    return -self.mean_error


@dataclasses.dataclass
class WeightedTotals(Totals):
  """Totals of a run with a timestep weighting (`config.classify.weighting`): every class on every draw, and the
  weighting's class scores."""

  weighted_logits: np.ndarray  # [N, C] the weighting's class scores at the uniform prior (classify/weighting.py)


def subset(totals, rows):
  """The same kind of totals (`Totals` or `SoftmaxTotals`) for the images at `rows`."""
  return dataclasses.replace(totals, **{f.name: getattr(totals, f.name)[rows] for f in dataclasses.fields(totals)})


def per_image(totals: Totals, temperature: float, prior=None) -> dict[str, np.ndarray]:
  """Predictions and uncertainty per image: vote and mean predictions, probabilities softmax(-mean error / T +
  log prior) (`prior` [C]: class probabilities; None: uniform), the predicted class's vote share, the vote entropy
  (nats) and the normalised error margin. The mean prediction is the most probable class; the vote ignores the
  prior (each draw still votes for its lowest error)."""
  vote = aggregate.vote_prediction(totals.votes, totals.mean_error)
  rows = np.arange(len(vote))
  logits = -totals.mean_error / temperature
  if prior is not None:
    logits = logits + np.log(np.asarray(prior, dtype=np.float64))
  prob = metrics.softmax_with_temperature(logits, 1.0)
  return {
    "prediction": vote,
    "prediction_mean": aggregate.mean_prediction(totals.mean_error) if prior is None else np.argmax(prob, axis=1),
    "prob": prob,
    "vote_share": totals.votes[rows, vote] / totals.draws,
    "entropy": metrics.vote_entropy(totals.votes),
    "margin": metrics.normalised_margin(totals.mean_error),
  }


def weighted_per_image(totals: WeightedTotals, prior=None) -> dict[str, np.ndarray]:
  """The weighted row's prediction and probabilities softmax(weighted logits + log prior): the fitted weighting
  carries its own scale, so no temperature."""
  logits = totals.weighted_logits
  if prior is not None:
    logits = logits + np.log(np.asarray(prior, dtype=np.float64))
  prob = metrics.softmax_with_temperature(logits, 1.0)
  return {"prediction_weighted": np.argmax(prob, axis=1), "prob_weighted": prob}


def class_prior(spec: str, train_labels, num_classes: int):
  """`config.classify.prior` as class probabilities [C], or None for 'uniform': 'train' (the training split's class
  frequencies) or comma-separated weights ('0.2,0.8', normalised)."""
  if spec == "uniform":
    return None
  if spec == "train":
    counts = np.bincount(np.asarray(train_labels), minlength=num_classes).astype(np.float64)
  else:
    try:
      counts = np.array([float(w) for w in spec.split(",")])
    except ValueError:
      raise ValueError(f"config.classify.prior={spec!r} is not uniform, train or {num_classes} weights") from None
  if counts.shape != (num_classes,) or (counts <= 0).any():
    raise ValueError(f"config.classify.prior={spec!r}: needs {num_classes} positive weights (every class seen)")
  return counts / counts.sum()


def split_metrics(totals: Totals, columns: dict[str, np.ndarray], class_names=None, positive_class: str = "") -> dict:
  """metrics.json's body: per aggregator (vote, mean; `weighted` with a timestep weighting's columns) classification
  and uncertainty metrics, plus n and NFE.

  The vote row uses vote shares as probabilities and confidence; the mean row the calibrated softmax. Each row
  has `misclassification_auroc` (how well its confidence tells right from wrong). With more than two classes
  each row adds `classes` (per-class precision, recall, specificity, F1, AUC, support; macro and weighted averages;
  the confusion matrix); a `positive_class` adds that class against the rest (sensitivity, specificity, AUC).
  """
  labels, probs = totals.label, columns["prob"]
  result = {"n": int(len(labels)), "nfe_per_image": float(np.mean(totals.nfe))}
  rows = [
    ("vote", columns["prediction"], totals.votes / totals.votes.sum(axis=1, keepdims=True), columns["vote_share"]),
    ("mean", columns["prediction_mean"], probs, probs.max(axis=1)),
  ]
  if "prob_weighted" in columns:
    weighted = columns["prob_weighted"]
    rows.append(("weighted", columns["prediction_weighted"], weighted, weighted.max(axis=1)))
  for name, preds, p, confidence in rows:
    result[name] = aggregator_metrics(labels, preds, p, confidence, class_names, positive_class)
  return result


def aggregator_metrics(labels, preds, probs, confidence, class_names=None, positive_class: str = "") -> dict:
  """One row of metrics.json: classification metrics of `probs` [N, C] and `preds`, accuracy at the coverages
  and the misclassification AUROC of `confidence`, and per class / one-vs-rest where asked (see split_metrics)."""
  m = metrics.classification_metrics(labels, probs, preds, confidence=confidence)
  correct = preds == labels
  for cov in COVERAGES:
    m[f"accuracy_at_{int(cov * 100)}_coverage"] = metrics.accuracy_at_coverage(correct, confidence, cov)
  m["misclassification_auroc"] = metrics.misclassification_auroc(correct, confidence)
  if class_names is not None and len(class_names) > 2:
    m["classes"] = metrics.per_class_report(labels, probs, preds, class_names)
  if positive_class:
    m["positive_class"] = {
      "name": positive_class,
      **metrics.one_vs_rest(labels, probs, preds, list(class_names).index(positive_class)),
    }
  return m


def risk_coverage_curves(totals: Totals, columns: dict[str, np.ndarray]) -> dict:
  """The risk-coverage curve of each aggregator with its own confidence (vote share; top probability)."""
  curves = {
    "vote": metrics.risk_coverage(columns["prediction"] == totals.label, columns["vote_share"]),
    "mean": metrics.risk_coverage(columns["prediction_mean"] == totals.label, columns["prob"].max(axis=1)),
  }
  if "prob_weighted" in columns:
    correct = columns["prediction_weighted"] == totals.label
    curves["weighted"] = metrics.risk_coverage(correct, columns["prob_weighted"].max(axis=1))
  return curves


# --- A discriminative classifier (the ResNet): softmax probabilities ----------------------------------------------


@dataclasses.dataclass
class SoftmaxTotals:
  """What is kept per image of a discriminative classifier: [N] or [N, C] arrays."""

  index: np.ndarray
  label: np.ndarray
  probs: np.ndarray  # [N, C] softmax probabilities (T = 1)

  def logits(self) -> np.ndarray:
    """What a temperature scales: log p (the logits up to a per-image constant)."""
    return np.log(np.clip(np.asarray(self.probs, np.float64), np.finfo(np.float64).tiny, None))


def softmax_per_image(totals: SoftmaxTotals, temperature: float) -> dict[str, np.ndarray]:
  """Prediction (the most probable class), probabilities softmax(log p / T) and their entropy (nats)."""
  prob = metrics.softmax_with_temperature(totals.logits(), temperature)
  return {"prediction": np.argmax(prob, axis=1), "prob": prob, "entropy": metrics.vote_entropy(prob)}


def softmax_split_metrics(totals: SoftmaxTotals, columns: dict, class_names=None, positive_class: str = "") -> dict:
  """metrics.json's body for a discriminative classifier: n and one row, `softmax`, with the top probability as
  confidence (the same metrics as each of the diffusion classifier's rows)."""
  prob = columns["prob"]
  row = aggregator_metrics(totals.label, columns["prediction"], prob, prob.max(axis=1), class_names, positive_class)
  return {"n": int(len(totals.label)), "softmax": row}


def softmax_risk_coverage(totals: SoftmaxTotals, columns: dict) -> dict:
  """The risk-coverage curve of the softmax row, top probability as confidence."""
  return {"softmax": metrics.risk_coverage(columns["prediction"] == totals.label, columns["prob"].max(axis=1))}
