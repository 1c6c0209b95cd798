r"""Timestep weighting of the mean-error decision, measured on stored draws without the reporting data.

  python docs/weighting_replay.py docs/dermamnist/errors_val_k64.npz --npz=data/dermamnist_28.npz \
    --t_min=0.1 --t_max=0.9
  python docs/weighting_replay.py docs/pneumoniamnist/errors_val_k64.npz --npz=data/pneumoniamnist_28.npz

Every weighting (medfusion/classify/weighting.py) and the shipped mean aggregator (mean error over the draws with t
in [t_min, t_max], temperature fitted on the fit half) are fitted on one half of the split
(`pipeline.half_split`, seed 0) and scored on the other, both directions. Per row: macro AUC, accuracy and
balanced accuracy on the reporting half, at the uniform prior and at the training split's class frequencies
(`--npz`'s train labels), with 95 % bootstrap intervals over the reporting half's images (500 resamples) and the
paired bootstrap interval of the gain over the shipped aggregator. Prints JSON.

`--train_errors=OUT/errors.npz` (a `medfusion.sweep --split=train --max_examples=M --config.classify.num_draws=16`
of the same model, t over [0, 1]) adds whether it matters that the denoiser saw the fit images: each form fitted on
those training images' 16 draws against the same form fitted on the other validation half's 16 draws nearest the
same t grid (every fourth stored draw), both scored on the reporting half's 64 draws.
"""

import argparse
import json

import numpy as np
from scipy import stats

from medfusion import metrics
from medfusion.classify import weighting
from medfusion.data import pipeline
from medfusion.evaluation import draw_analysis, report

ROWS = (  # name, form, offsets
  ("mean error (shipped)", None, False),
  ("label-free: standardised gaps per t bin", "label_free", False),
  ("shared weight per t bin", "shared", False),
  ("shared weight per t bin + class offsets", "shared", True),
  ("per-class weights (C x B features)", "per_class", False),
  ("per-class weights + class offsets", "per_class", True),
)


def scores(labels, probs):
  """Macro AUC (one-vs-rest; binary: of class 1), accuracy, balanced accuracy."""
  preds = probs.argmax(axis=1)
  c = probs.shape[1]
  ranks = stats.rankdata(probs, axis=0)  # Mann-Whitney form of the AUC, ties counted half
  positive = labels[:, None] == np.arange(c)[None, :]
  n_pos, n_neg = positive.sum(axis=0), (~positive).sum(axis=0)
  aucs = ((ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
  auc = aucs[1] if c == 2 else aucs.mean()
  recall = [np.mean(preds[labels == k] == k) for k in range(c)]
  return np.array([auc, np.mean(preds == labels), np.mean(recall)])


def bootstrap(labels, probs, base_probs, rng, resamples=500):
  """95 % intervals [3, 2] of the scores and of their gain over the base, resampling images (paired)."""
  draws, gains = [], []
  for _ in range(resamples):
    idx = rng.integers(0, len(labels), len(labels))
    if len(np.unique(labels[idx])) < probs.shape[1]:
      continue
    s, b = scores(labels[idx], probs[idx]), scores(labels[idx], base_probs[idx])
    draws.append(s)
    gains.append(s - b)
  return np.percentile(draws, [2.5, 97.5], axis=0).T, np.percentile(gains, [2.5, 97.5], axis=0).T


def half_rows(errors, t, labels, fit_idx, rep_idx, t_min, t_max, train_prior, num_bins, rng):
  ranged, _ = draw_analysis.in_t_range(errors, t, t_min, t_max, "errors")
  rows = {}
  for prior_name, prior in (("uniform", None), ("train", train_prior)):
    temperature = metrics.fit_temperature(-ranged[fit_idx].mean(axis=2), labels[fit_idx])
    log_prior = 0.0 if prior is None else np.log(prior)
    base = metrics.softmax_with_temperature(-ranged[rep_idx].mean(axis=2) / temperature + log_prior, 1.0)
    for name, form, offsets in ROWS:
      if form is None:
        probs = base
      else:
        fitted = weighting.fit(errors[fit_idx], t[fit_idx], labels[fit_idx], form, num_bins, 0.0, 1.0, offsets)
        probs = metrics.softmax_with_temperature(fitted.logits(errors[rep_idx], t[rep_idx], prior), 1.0)
      value = scores(labels[rep_idx], probs)
      interval, gain = bootstrap(labels[rep_idx], probs, base, rng)
      rows[f"{name} | prior {prior_name}"] = {
        key: {"value": float(value[i]), "ci95": interval[i].tolist(), "gain_ci95": gain[i].tolist()}
        for i, key in enumerate(("macro_auc", "accuracy", "balanced_accuracy"))
      }
  return rows


def every_fourth(errors, t):
  """The 16 of 64 stratified draws at t = (4j + 1.5) / 64: the same spread over [0, 1] as 16 stratified draws."""
  keep = np.round(t * 64 - 0.5).astype(int) % 4 == 1
  n, c, _ = errors.shape
  return errors[np.repeat(keep[:, None, :], c, axis=1)].reshape(n, c, -1), t[keep].reshape(n, -1)


def train_rows(errors, t, labels, fit_idx, rep_idx, train, train_prior, num_bins, rng):
  """Each form fitted on the training slice's draws and on the fit half's 16 draws, scored on the reporting half."""
  fit16 = every_fourth(errors[fit_idx], t[fit_idx])
  rows = {}
  for form, offsets in (("label_free", False), ("shared", True), ("per_class", True)):
    for where, (e, tt, y) in (("validation half, 16 draws", (*fit16, labels[fit_idx])), ("training slice", train)):
      fitted = weighting.fit(e, tt, y, form, num_bins, 0.0, 1.0, offsets)
      for prior_name, prior in (("uniform", None), ("train", train_prior)):
        probs = metrics.softmax_with_temperature(fitted.logits(errors[rep_idx], t[rep_idx], prior), 1.0)
        value = scores(labels[rep_idx], probs)
        rows[f"{form}{' + offsets' if offsets else ''} | fitted on {where} | prior {prior_name}"] = {
          key: float(value[i]) for i, key in enumerate(("macro_auc", "accuracy", "balanced_accuracy"))
        }
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("errors")
  parser.add_argument("--npz", required=True, help="The MedMNIST-layout file whose train split gives the prior.")
  parser.add_argument("--t_min", type=float, default=0.0)
  parser.add_argument("--t_max", type=float, default=1.0)
  parser.add_argument("--num_bins", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--train_errors", default="", help="errors.npz of a sweep of a slice of the train split.")
  args = parser.parse_args()
  with np.load(args.errors) as stored:
    errors, t, labels = stored["errors"].astype(np.float64), stored["t"], stored["labels"]
  with np.load(args.npz) as data:
    train_prior = report.class_prior("train", data["train_labels"].reshape(-1), errors.shape[1])
  a, b = pipeline.half_split(labels, args.seed)
  rng = np.random.default_rng(args.seed)
  result = {"n": int(len(labels)), "halves": [int(len(a)), int(len(b))], "seed": args.seed}
  for name, fit_idx, rep_idx in (("fit on A, report on B", a, b), ("fit on B, report on A", b, a)):
    result[name] = half_rows(
      errors, t, labels, fit_idx, rep_idx, args.t_min, args.t_max, train_prior, args.num_bins, rng
    )
  if args.train_errors:
    with np.load(args.train_errors) as stored:
      train = stored["errors"].astype(np.float64), stored["t"], stored["labels"]
    result["train_fit"] = {"train_images": int(len(train[2])), "train_draws": int(train[0].shape[2])}
    for name, fit_idx, rep_idx in (("report on B", a, b), ("report on A", b, a)):
      result["train_fit"][name] = train_rows(
        errors, t, labels, fit_idx, rep_idx, train, train_prior, args.num_bins, rng
      )
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
