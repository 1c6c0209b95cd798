"""From the diffusion classifier's per-image totals to predictions, uncertainty scores and split metrics.

Pure functions of numpy arrays, shared by batch scoring (scores.csv, metrics.json) and the evaluator that runs
during training, so both report exactly the same quantities.
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


def per_image(totals: Totals, temperature: float) -> dict[str, np.ndarray]:
  """Predictions and uncertainty per image: vote and mean predictions, softmax(-mean error / T) probabilities,
  the predicted class's vote share, the vote entropy (nats) and the normalised error margin."""
  vote = aggregate.vote_prediction(totals.votes, totals.mean_error)
  rows = np.arange(len(vote))
  return {
    "prediction": vote,
    "prediction_mean": aggregate.mean_prediction(totals.mean_error),
    "prob": metrics.softmax_with_temperature(-totals.mean_error, temperature),
    "vote_share": totals.votes[rows, vote] / totals.draws,
    "entropy": metrics.vote_entropy(totals.votes),
    "margin": metrics.normalised_margin(totals.mean_error),
  }


def split_metrics(totals: Totals, columns: dict[str, np.ndarray]) -> dict:
  """metrics.json's body: per aggregator (vote, mean) classification and uncertainty metrics, plus n and NFE.

  The vote row uses vote shares as probabilities and confidence; the mean row the calibrated softmax.
  """
  labels, probs = totals.label, columns["prob"]
  result = {"n": int(len(labels)), "nfe_per_image": float(np.mean(totals.nfe))}
  for name, preds, p, confidence in (
    ("vote", columns["prediction"], totals.votes / totals.votes.sum(axis=1, keepdims=True), columns["vote_share"]),
    ("mean", columns["prediction_mean"], probs, probs.max(axis=1)),
  ):
    m = metrics.classification_metrics(labels, p, preds, confidence=confidence)
    correct = preds == labels
    for cov in COVERAGES:
      m[f"accuracy_at_{int(cov * 100)}_coverage"] = metrics.accuracy_at_coverage(correct, confidence, cov)
    result[name] = m
  return result


def risk_coverage_curves(totals: Totals, columns: dict[str, np.ndarray]) -> dict:
  """The risk-coverage curve of each aggregator with its own confidence (vote share; top probability)."""
  return {
    "vote": metrics.risk_coverage(columns["prediction"] == totals.label, columns["vote_share"]),
    "mean": metrics.risk_coverage(columns["prediction_mean"] == totals.label, columns["prob"].max(axis=1)),
  }
