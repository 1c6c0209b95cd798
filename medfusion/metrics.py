"""Classification, calibration and selective-prediction metrics for the diffusion classifier and baselines.

Every function is a pure function of numpy arrays. Labels are integer class ids in [0, C); probabilities are
[N, C] rows summing to 1. Standard scores come from scikit-learn; this module adds what it lacks: specificity,
top-label ECE, risk-coverage curves, temperature scaling and the diffusion classifier's uncertainty scores.
"""

import functools
import math
import warnings

import numpy as np
import scipy.optimize
import scipy.special
from numpy.typing import ArrayLike
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

_MARGIN_EPS = 1e-12
# The keys of `classification_metrics`.
CLASSIFICATION_METRICS = (
  "accuracy",
  "balanced_accuracy",
  "auc",
  "f1",
  "precision",
  "recall",
  "specificity",
  "ece",
  "aurc",
)


def _labels_and_scores(labels: ArrayLike, scores: ArrayLike, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
  """Returns labels as int [N] and scores as float [N, C], raising ValueError if they do not fit together."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2 or scores.shape[1] < 2:
    raise ValueError(f"{name} must have shape [N, C] with C >= 2, got {scores.shape}")
  if labels.shape != scores.shape[:1]:
    raise ValueError(f"labels must have shape [{scores.shape[0]}] to match {name}, got {labels.shape}")
  num_classes = scores.shape[1]
  in_range = labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes)
  if not np.issubdtype(labels.dtype, np.integer) or not in_range:
    found = f"{labels.dtype} values {np.unique(labels)[:10]}"
    raise ValueError(f"labels must be integers in [0, {num_classes}), got {found}")
  return labels, scores


def _correct_and_confidence(correct: ArrayLike, confidence: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Returns correct as bool [N] and confidence as float [N], raising ValueError if they do not fit."""
  correct = np.asarray(correct, dtype=bool)
  confidence = np.asarray(confidence, dtype=np.float64)
  if correct.ndim != 1 or correct.size == 0:
    raise ValueError(f"correct must be a non-empty 1-D array, got shape {correct.shape}")
  if confidence.shape != correct.shape:
    raise ValueError(f"confidence must have shape {correct.shape} to match correct, got {confidence.shape}")
  return correct, confidence


def _quiet(fn):
  """Runs `fn` without the warnings scikit-learn and numpy give for scores a split leaves undefined (one class
  only, a class never predicted): the results already say so (NaN, or 0 where documented)."""

  @functools.wraps(fn)
  def quiet(*args, **kwargs):
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
      warnings.simplefilter("ignore", UndefinedMetricWarning)
      warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.")  # e.g. "A single label was found"
      warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
      return fn(*args, **kwargs)

  return quiet


# Why a score is undefined, by its name (`with_nulls`).
UNDEFINED = {
  "auc": "the images compared hold only one class",
  "misclassification_auroc": "every prediction is right, or every one is wrong",
  "sensitivity": "no image of the positive class",
  "specificity": "every image is of the positive class",
}


def with_nulls(tree, path: str = ""):
  """(tree, undefined) for strict JSON: `tree` (nested dicts and lists) with every NaN or infinite float replaced by
  None, and {dotted path: why it is undefined} for each one replaced."""
  if isinstance(tree, dict):
    pairs = [(k, with_nulls(v, f"{path}.{k}" if path else str(k))) for k, v in tree.items()]
    return {k: v for k, (v, _) in pairs}, {p: why for _, (_, u) in pairs for p, why in u.items()}
  if isinstance(tree, (list, tuple)):
    items = [with_nulls(v, f"{path}[{i}]") for i, v in enumerate(tree)]
    return [v for v, _ in items], {p: why for _, u in items for p, why in u.items()}
  if isinstance(tree, (float, np.floating)) and not math.isfinite(tree):
    name = path.rsplit(".", 1)[-1]
    return None, {path: f"undefined: {UNDEFINED.get(name, 'not defined on these images')}"}
  return tree, {}


@_quiet
def classification_metrics(
  labels: ArrayLike, probs: ArrayLike, preds: ArrayLike | None = None, confidence: ArrayLike | None = None
) -> dict[str, float]:
  """The standard report for one classifier on one evaluation set.

  Binary problems (C = 2) score class 1 as the positive class. Multi-class problems report macro averages
  (auc and specificity one-vs-rest) over the classes seen in labels or preds, as scikit-learn does; auc
  averages over the classes in labels only. Undefined ratios count as 0 (scikit-learn's zero_division=0),
  except auc, which is NaN when labels hold a single class.

  Args:
    labels: int [N], the true classes.
    probs: float [N, C], class probabilities; ece always uses their top-label confidence and argmax.
    preds: int [N], the predicted classes (e.g. a majority vote); argmax(probs) if None.
    confidence: float [N], how sure each prediction is (e.g. vote share), used for aurc; max(probs) if None.

  Returns:
    accuracy, balanced_accuracy, auc, f1, precision, recall, specificity, ece and aurc as floats.
  """
  labels, probs = _labels_and_scores(labels, probs)
  num_classes = probs.shape[1]
  preds = probs.argmax(axis=1) if preds is None else np.asarray(preds)
  if preds.shape != labels.shape:
    raise ValueError(f"preds must have shape {labels.shape} to match labels, got {preds.shape}")
  confidence = probs.max(axis=1) if confidence is None else confidence
  binary = num_classes == 2

  present = np.unique(labels)
  if present.size < 2:
    auc = float("nan")
  elif binary:
    auc = skm.roc_auc_score(labels, probs[:, 1])
  else:
    auc = skm.roc_auc_score(np.eye(num_classes)[labels][:, present], probs[:, present], average="macro")

  average = "binary" if binary else "macro"
  kwargs = dict(average=average, zero_division=0)
  # One-vs-rest confusion per class: [K, 2, 2] of [[tn, fp], [fn, tp]].
  confusion = skm.multilabel_confusion_matrix(labels, preds, labels=[1] if binary else None)
  tn, fp = confusion[:, 0, 0], confusion[:, 0, 1]
  specificity = np.divide(tn, tn + fp, out=np.zeros(tn.shape), where=tn + fp > 0).mean()

  return {
    "accuracy": float(skm.accuracy_score(labels, preds)),
    "balanced_accuracy": float(skm.balanced_accuracy_score(labels, preds)),
    "auc": float(auc),
    "f1": float(skm.f1_score(labels, preds, **kwargs)),
    "precision": float(skm.precision_score(labels, preds, **kwargs)),
    "recall": float(skm.recall_score(labels, preds, **kwargs)),
    "specificity": float(specificity),
    "ece": expected_calibration_error(labels, probs),
    "aurc": aurc(preds == labels, confidence),
  }


@_quiet
def misclassification_auroc(correct: ArrayLike, confidence: ArrayLike) -> float:
  """How well a confidence score tells right from wrong predictions: the AUROC of `confidence` for `correct`
  (1: every right prediction is surer than every wrong one; 0.5: no better than chance; NaN if all are right or
  all wrong)."""
  correct, confidence = _correct_and_confidence(correct, confidence)
  if correct.all() or not correct.any():
    return float("nan")
  return float(skm.roc_auc_score(correct, confidence))


@_quiet
def per_class_report(labels: ArrayLike, probs: ArrayLike, preds: ArrayLike, class_names) -> dict:
  """Per class (one-vs-rest): precision, recall (sensitivity), specificity, F1, AUC and support; their macro and
  support-weighted averages; and the confusion matrix (rows: true class, columns: predicted)."""
  labels, probs = _labels_and_scores(labels, probs)
  preds = np.asarray(preds)
  classes = list(range(probs.shape[1]))
  confusion = skm.confusion_matrix(labels, preds, labels=classes)
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
  report = {}
  for c, name in enumerate(class_names):
    tn = confusion.sum() - confusion[c].sum() - confusion[:, c].sum() + confusion[c, c]
    negatives = confusion.sum() - confusion[c].sum()
    positive = labels == c
    auc = skm.roc_auc_score(positive, probs[:, c]) if 0 < positive.sum() < len(labels) else float("nan")
    report[name] = {
      "precision": float(precision[c]),
      "recall": float(recall[c]),
      "specificity": float(tn / negatives) if negatives else 0.0,
      "f1": float(f1[c]),
      "auc": float(auc),
      "support": int(support[c]),
    }
  fields = ("precision", "recall", "specificity", "f1", "auc")
  weights = support / max(support.sum(), 1)
  averages = {
    "macro": {f: float(np.nanmean([report[n][f] for n in class_names])) for f in fields},
    "weighted": {
      f: float(np.nansum([w * report[n][f] for w, n in zip(weights, class_names, strict=True)])) for f in fields
    },
  }
  return {"per_class": report, **averages, "confusion_matrix": confusion.tolist()}


@_quiet
def one_vs_rest(labels: ArrayLike, probs: ArrayLike, preds: ArrayLike, positive: int) -> dict[str, float]:
  """Class `positive` against the rest, as a binary task: sensitivity, specificity and AUC of its probability
  (e.g. melanoma in a multi-class skin-lesion model, as the ISIC task reports), from the multi-class predictions."""
  labels, probs = _labels_and_scores(labels, probs)
  truth, called = labels == positive, np.asarray(preds) == positive
  both = truth.any() and not truth.all()
  return {
    "sensitivity": float((called & truth).sum() / truth.sum()) if truth.any() else float("nan"),
    "specificity": float((~called & ~truth).sum() / (~truth).sum()) if (~truth).any() else float("nan"),
    "auc": float(skm.roc_auc_score(truth, probs[:, positive])) if both else float("nan"),
  }


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, num_bins: int = 15) -> float:
  """Top-label expected calibration error: how far confidence is from accuracy, averaged over samples.

  Confidence is max(probs) and the prediction argmax(probs). Samples fall into `num_bins` equal-width bins
  (lower, upper] on [0, 1]; ECE is the sample-weighted mean of |accuracy - mean confidence| over bins.
  """
  labels, probs = _labels_and_scores(labels, probs)
  if num_bins < 1:
    raise ValueError(f"num_bins must be positive, got {num_bins}")
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
  gap = np.bincount(bins, weights=correct - confidence, minlength=num_bins)
  return float(np.abs(gap).sum() / labels.size)


def risk_coverage(correct: ArrayLike, confidence: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """The risk-coverage curve of selective prediction: error rate when keeping only the k most confident.

  Samples are ranked by confidence, highest first. Within a group of tied confidences the errors are spread
  evenly (the expectation over all orders of the group), so the curve never depends on input order.

  Args:
    correct: bool [N], whether each prediction is right.
    confidence: float [N], higher means surer.

  Returns:
    coverage [N] = k / N and risk [N] = error rate among the k most confident, for k = 1..N.
  """
  correct, confidence = _correct_and_confidence(correct, confidence)
  num = correct.size
  order = np.argsort(-confidence, kind="stable")
  errors = np.concatenate([[0.0], np.cumsum(~correct[order])])  # errors[k]: errors among the first k.
  _, starts, sizes = np.unique(-confidence[order], return_index=True, return_counts=True)
  group_start = np.repeat(starts, sizes)  # For each rank, how many samples rank above its tie group.
  group_end = group_start + np.repeat(sizes, sizes)
  kept = np.arange(1, num + 1)
  group_errors = errors[group_end] - errors[group_start]
  expected_errors = errors[group_start] + group_errors * (kept - group_start) / (group_end - group_start)
  return kept / num, expected_errors / kept


def aurc(correct: ArrayLike, confidence: ArrayLike) -> float:
  """Area under the risk-coverage curve (mean risk over k = 1..N); lower means errors rank less confident."""
  return float(risk_coverage(correct, confidence)[1].mean())


def accuracy_at_coverage(correct: ArrayLike, confidence: ArrayLike, coverage: float) -> float:
  """Accuracy on the most confident `coverage` fraction, i.e. after setting the least certain cases aside.

  Keeps ceil(coverage * N) samples (at least one); ties are handled as in `risk_coverage`.
  """
  if not 0 < coverage <= 1:
    raise ValueError(f"coverage must be in (0, 1], got {coverage}")
  _, risk = risk_coverage(correct, confidence)
  kept = max(1, int(np.ceil(coverage * risk.size - 1e-9)))
  return float(1.0 - risk[kept - 1])


def softmax_with_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
  """softmax(logits / temperature) over the last axis, computed stably for any logit scale."""
  if not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature}")
  return scipy.special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


LOG_TEMPERATURE_BOUND = 12.0  # fit_temperature searches log T in [-bound, bound]


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
  """The temperature T > 0 that minimises the mean NLL of softmax(logits / T) on held-out labels.

  Works at any logit scale, including the diffusion classifier's logits (minus mean denoising error, whose
  class differences are ~1e-3..1e-1, so T can be ~1e-3): a grid over log T in [-12, 12] finds the basin and
  a bounded scalar search refines it.

  Args:
    logits: float [N, C], e.g. negative mean errors per class (-inf for a class pruned from an image).
    labels: int [N], the true classes.
  """
  labels, logits = _labels_and_scores(labels, logits, "logits")
  # A true class pruned from an image (logit -inf) costs infinite NLL at every T: it cannot inform the fit.
  kept = np.isfinite(logits[np.arange(labels.size), labels])
  labels, logits = labels[kept], logits[kept]
  rows = np.arange(labels.size)

  def nll(log_t: float) -> float:
    return -scipy.special.log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean()

  step, bound = 0.25, LOG_TEMPERATURE_BOUND
  grid = np.arange(-bound, bound + step / 2, step)
  best = grid[np.argmin([nll(log_t) for log_t in grid])]
  bounds = (max(best - step, -bound), min(best + step, bound))
  result = scipy.optimize.minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-6})
  return float(np.exp(result.x))


def temperature_is_degenerate(temperature: float) -> bool:
  """True when a fitted temperature sits at the edge of the search: the logits carried no usable signal (an
  untrained model: every probability ~1/C) or separated the labels perfectly (T -> 0)."""
  return abs(np.log(temperature)) >= LOG_TEMPERATURE_BOUND - 0.25


def vote_entropy(votes: ArrayLike) -> np.ndarray:
  """Entropy in nats of each row's vote distribution votes / sum(votes): 0 if unanimous, ln C if split evenly.

  Args:
    votes: non-negative [N, C] vote counts (or weights), each row with a positive total.
  """
  votes = np.asarray(votes, dtype=np.float64)
  if votes.ndim != 2:
    raise ValueError(f"votes must have shape [N, C], got {votes.shape}")
  totals = votes.sum(axis=1, keepdims=True)
  if (votes < 0).any() or (totals <= 0).any():
    raise ValueError("votes must be non-negative with a positive total in every row")
  return scipy.special.entr(votes / totals).sum(axis=1)


def normalised_margin(mean_errors: ArrayLike) -> np.ndarray:
  """How clearly the best class wins: (second-lowest - lowest mean error) / lowest mean error, per row.

  Args:
    mean_errors: non-negative [N, C] mean denoising error per class, C >= 2; lower means more likely.
  """
  mean_errors = np.asarray(mean_errors, dtype=np.float64)
  if mean_errors.ndim != 2 or mean_errors.shape[1] < 2:
    raise ValueError(f"mean_errors must have shape [N, C] with C >= 2, got {mean_errors.shape}")
  lowest, second = np.sort(mean_errors, axis=1)[:, :2].T
  return (second - lowest) / np.maximum(lowest, _MARGIN_EPS)
