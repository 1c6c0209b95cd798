r"""Test-time symmetries (`classify.symmetries=flips_rot90`) against plain draws, on the same images and draws.

  python -m medfusion.sweep --workdir=pretrained/dermamnist --split=val --output=OUT/none --max_examples=400 \
    --reorderings=0 --config.classify.num_draws=16 --config.classify.symmetries=none
  python -m medfusion.sweep ... --output=OUT/flips_rot90 ... --config.classify.symmetries=flips_rot90
  python docs/symmetry_replay.py OUT/none/errors.npz OUT/flips_rot90/errors.npz --npz=data/dermamnist_28.npz

Both sweeps use the same (t, noise) draws; the second also shows draw k the image under one of the 8 symmetries of
the square. Per aggregator (mean error: softmax(-mean error / T) with T fitted on the other half of the images;
vote: vote shares) and prior (uniform; the training split's class frequencies, mean only): macro AUC, accuracy and
balanced accuracy on each half (`pipeline.half_split`, seed 0), with the paired 95 % bootstrap interval of the
gain (500 resamples of the half's images). Prints JSON.
"""

import argparse
import json

import numpy as np
import weighting_replay  # docs/weighting_replay.py: scores() and the paired bootstrap

from medfusion import metrics
from medfusion.classify import aggregate
from medfusion.data import pipeline
from medfusion.evaluation import report


def probabilities(errors, labels, fit_idx, rep_idx, prior):
  """{aggregator: probabilities [len(rep_idx), C]} of the reporting images; T fitted on the fit images."""
  mean = errors.mean(axis=2)
  temperature = metrics.fit_temperature(-mean[fit_idx], labels[fit_idx])
  logits = -mean[rep_idx] / temperature + (np.log(prior) if prior is not None else 0.0)
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  votes = aggregate.votes_from_errors(errors[rep_idx])
  return {"mean": probs / probs.sum(axis=1, keepdims=True), "vote": votes / votes.sum(axis=1, keepdims=True)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("plain")
  parser.add_argument("symmetric")
  parser.add_argument("--npz", required=True, help="The MedMNIST-layout file whose train split gives the prior.")
  args = parser.parse_args()
  plain, symmetric = np.load(args.plain), np.load(args.symmetric)
  labels = plain["labels"]
  if not (np.array_equal(labels, symmetric["labels"]) and np.array_equal(plain["t"], symmetric["t"])):
    raise SystemExit("the two errors.npz files are not of the same images and draws")
  with np.load(args.npz) as data:
    train_prior = report.class_prior("train", data["train_labels"].reshape(-1), plain["errors"].shape[1])
  rng = np.random.default_rng(0)
  halves = pipeline.half_split(labels, seed=0)
  rows = []
  for name, (fit_idx, rep_idx) in (("A", halves), ("B", halves[::-1])):
    for prior_name, prior in (("uniform", None), ("train", train_prior)):
      base = probabilities(plain["errors"], labels, fit_idx, rep_idx, prior)
      new = probabilities(symmetric["errors"], labels, fit_idx, rep_idx, prior)
      for agg in ("mean", "vote") if prior is None else ("mean",):
        _, gain = weighting_replay.bootstrap(labels[rep_idx], new[agg], base[agg], rng)
        s_new, s_base = (
          weighting_replay.scores(labels[rep_idx], new[agg]),
          weighting_replay.scores(labels[rep_idx], base[agg]),
        )
        for i, metric in enumerate(("macro_auc", "accuracy", "balanced_accuracy")):
          rows.append(
            {
              "report_half": name,
              "aggregator": agg,
              "prior": prior_name,
              "metric": metric,
              "plain": round(float(s_base[i]), 4),
              "symmetries": round(float(s_new[i]), 4),
              "gain_interval": [round(float(g), 4) for g in gain[i]],
            }
          )
  print(json.dumps({"n": int(len(labels)), "draws": int(plain["errors"].shape[2]), "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
