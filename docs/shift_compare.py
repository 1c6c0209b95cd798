r"""Two corruption-benchmark runs of one model compared cell by cell: a default that spends fewer evaluations (class
pruning, a stopping rule) against the full budget, on the same corrupted images.

  python docs/shift_compare.py FULL/shift.json OTHER/shift.json

Both runs must hold the same images (split, number of images, corruption set and seed). For every cell in both and
each aggregator (vote, mean): OTHER's accuracy, balanced accuracy, AUC and misclassification AUROC minus FULL's,
OTHER's AURC over FULL's, and both runs' evaluations per image; then the means per family and severity
(shift_stopping.group_means). Prints JSON.
"""

import argparse
import json
import os

from shift_stopping import FIGURES, compare, group_means

SAME_IMAGES = ("split", "n", "corruption_set", "corruption_seed")


def load(path: str) -> dict:
  """A shift run's shift.json; a missing or unreadable file is a one-line error."""
  if not os.path.isfile(path):
    raise SystemExit(f"error: {path} is not a file (a medfusion.shift run's shift.json)")
  with open(path) as f:
    try:
      run = json.load(f)
    except json.JSONDecodeError as e:
      raise SystemExit(f"error: {path} is not JSON ({e})") from None
  if not {"results", "models", *SAME_IMAGES} <= set(run):
    raise SystemExit(f"error: {path} is not a medfusion.shift run's shift.json")
  return run


def flat(cell: dict) -> dict:
  """A cell's {aggregator: {figure: value}} as {'<aggregator>_<figure>': value} and its evaluations per image."""
  out = {f"{name}_{figure}": value for name, figures in cell.items() for figure, value in figures.items()}
  return out | {"nfe_per_image": cell["vote"]["nfe_per_image"]}


def compare_runs(full: dict, other: dict, model: str = "model") -> dict:
  """OTHER's figures against FULL's on every cell both hold (`compare`), and their means per group."""
  for run in (full, other):
    if model not in run["results"]:
      raise SystemExit(f"error: a run has no {model!r} results (it has {sorted(run['results'])})")
  for key in SAME_IMAGES:
    if full[key] != other[key]:
      raise SystemExit(f"error: the runs differ in {key} ({full[key]!r} against {other[key]!r}): not the same images")
  cells = sorted(set(full["results"][model]) & set(other["results"][model]))
  if not cells:
    raise SystemExit("error: the runs have no cell in common")
  figures = ("accuracy", "balanced_accuracy", *FIGURES)
  per_cell = {
    cell: compare(flat(other["results"][model][cell]), flat(full["results"][model][cell]), figures) for cell in cells
  }
  return {
    "temperatures": {"full": full["models"][model]["temperature"], "other": other["models"][model]["temperature"]},
    "summary": group_means(per_cell),
    "cells": per_cell,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("full", help="shift.json of the full-budget run")
  parser.add_argument("other", help="shift.json of the run compared with it")
  parser.add_argument("--model", default="model", choices=("model", "reference"), help="reference: --compare")
  args = parser.parse_args()
  result = compare_runs(load(args.full), load(args.other), args.model)
  print(json.dumps({"full": args.full, "other": args.other} | result, indent=1))


if __name__ == "__main__":
  main()
