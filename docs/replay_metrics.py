r"""Split metrics, as `medfusion.score` writes them, replayed from the stored draws of `medfusion.sweep`.

  python docs/replay_metrics.py docs/dermamnist/errors_val_k64.npz --t_min=0.1 --t_max=0.9 --prior=train \
    --npz=data/dermamnist_28.npz --positive_class=mel

Every draw of errors.npz (or those with t in [t_min, t_max]) on every class, the temperature fitted on the same
split (in-sample, as `medfusion.score` fits it on the eval split), and the class prior `uniform` or `train` (the
class frequencies of the npz's train split). `--half=A|B` keeps one half of the split (`pipeline.half_split`, the
halves training chooses on and `medfusion.score` reports). Prints the metrics as JSON (the rows of docs/*.md's
tables).
"""

import argparse
import json

import numpy as np

from medfusion import metrics
from medfusion.classify import aggregate
from medfusion.data import pipeline
from medfusion.evaluation import draw_analysis, report


def replay(errors, t, labels, t_min, t_max, prior, class_names, positive_class):
  errors, _ = draw_analysis.in_t_range(errors, t, t_min, t_max, "errors.npz")
  n, c, k = errors.shape
  totals = report.Totals(
    np.arange(n), labels, aggregate.votes_from_errors(errors), errors.mean(axis=2), np.full(n, k), np.full(n, c * k)
  )
  temperature = metrics.fit_temperature(-totals.mean_error, labels)
  columns = report.per_image(totals, temperature, prior)
  return {"temperature": temperature, **report.split_metrics(totals, columns, class_names, positive_class)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("errors")
  parser.add_argument("--t_min", type=float, default=0.0)
  parser.add_argument("--t_max", type=float, default=1.0)
  parser.add_argument("--prior", choices=("uniform", "train"), default="uniform")
  parser.add_argument("--npz", default="", help="The MedMNIST-layout file whose train split gives the prior.")
  parser.add_argument("--class_names", default="", help="Comma-separated (default: class indices).")
  parser.add_argument("--positive_class", default="")
  parser.add_argument("--half", choices=pipeline.HALVES, default="all")
  args = parser.parse_args()
  with np.load(args.errors) as stored:
    errors, t, labels = stored["errors"], stored["t"], stored["labels"]
  keep = pipeline.half_rows(labels, args.half)
  errors, t, labels = errors[keep], t[keep], labels[keep]
  c = errors.shape[1]
  names = args.class_names.split(",") if args.class_names else [str(i) for i in range(c)]
  prior = None
  if args.prior == "train":
    with np.load(args.npz) as data:
      prior = report.class_prior("train", data["train_labels"].reshape(-1), c)
  result = replay(errors, t, labels, args.t_min, args.t_max, prior, names, args.positive_class)
  print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
  main()
