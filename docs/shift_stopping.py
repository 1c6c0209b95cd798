r"""Early-stopping rules replayed on every cell of a corruption benchmark's stored draws (issue 21: judge defaults
on shifted data, not only on the clean split that chose them).

  python docs/shift_stopping.py docs/shift/pneumoniamnist_val128_k16_errors.npz
  python docs/shift_stopping.py OUT/cells/model        # the cells a `medfusion.shift --errors` run wrote
  python docs/shift_stopping.py OUT/cells/model --gather docs/shift/NAME_errors.npz   # also keeps them as one npz

Input: the draws `medfusion.shift --errors` keeps, as its cell folder (`<cell>.npz` with `errors` [N, C, K] and
`label`) or gathered in one npz (`<cell>/errors` per cell, `labels`). Each named rule (`RULES`) is replayed on
`--orders` orders of every cell's draws (`draw_analysis.reordered_stopping`), with one temperature for the mean
aggregator fitted on the clean cell's full budget, and compared with the full budget of the same cell: vote and
mean AUC, AURC and misclassification AUROC, evaluations per image, and which parts of
`draw_analysis.STOPPING_TARGET` hold (cost excepted: at the K of a shift run no rule can reach it). Prints JSON:
per cell and rule, and per rule the means over the cells of each family and severity.
"""

import argparse
import json
import os

import numpy as np
from stopping_protocol import SHIPPED, replay

from medfusion import metrics, writers
from medfusion.data import corruptions
from medfusion.evaluation import draw_analysis

RULES = {
  "predictive, delta 0.02, R 2 (the old default)": SHIPPED,
  "predictive, delta 0.05, R 2, margin floor 0.03": SHIPPED | {"delta": 0.05, "floors": [0.0, 0.03]},
  "predictive, delta 0.02, R 2, margin floor 0.05": SHIPPED | {"floors": [0.0, 0.05]},
  "predictive, delta 0.02, R 2, share floor 0.8": SHIPPED | {"floors": [0.8, 0.0]},
}
FIGURES = ("auc", "aurc", "misclassification_auroc")


def group(cell: str) -> str:
  """'<family> <severity>' for a cell named '<corruption>_<severity>' (MedMNIST-C families), else the cell itself
  (clean, resampled)."""
  name, _, severity = cell.rpartition("_")
  found = [f for f, members in corruptions.FAMILIES.items() if name in members]
  return f"{found[0]} {severity}" if found else cell


def _folder_cells(folder: str):
  """(cell name, its errors [N, C, K], timesteps [N, K], labels [N]) of each `<cell>.npz` in a shift run's cell
  folder; a cell without draws is a one-line error."""
  for name in sorted(n for n in os.listdir(folder) if n.endswith(".npz")):
    with np.load(os.path.join(folder, name)) as cell:
      if "errors" not in cell.files:
        raise SystemExit(f"error: {os.path.join(folder, name)} holds no draws (run medfusion.shift with --errors)")
      yield name.removesuffix(".npz"), cell["errors"], cell["t"], cell["label"]


def gather(folder: str, output: str) -> None:
  """Writes a cell folder's draws as one npz (`<cell>/errors`, `<cell>/t`, `labels`), the file docs/shift/ keeps."""
  arrays, labels = {}, None
  for cell, errors, t, cell_labels in _folder_cells(folder):
    if labels is not None and not np.array_equal(labels, cell_labels):
      raise SystemExit(f"error: {folder}/{cell}.npz holds other images than the folder's other cells")
    arrays |= {f"{cell}/errors": errors, f"{cell}/t": t}
    labels = cell_labels
  writers.write_npz_atomic(output, labels=labels.astype(np.int32), **arrays)


def load_cells(path: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """({cell: errors [N, C, K]}, labels [N]) from a shift run's cell folder or a gathered npz."""
  if not os.path.exists(path):
    raise SystemExit(f"error: {path} does not exist (a shift run's cells/model folder or a gathered errors npz)")
  if os.path.isdir(path):
    cells, labels = {}, None
    for cell, errors, _, cell_labels in _folder_cells(path):
      cells[cell], labels = errors.astype(np.float64), cell_labels
    return cells, labels
  with np.load(path) as stored:
    cells = {k.split("/")[0]: stored[k].astype(np.float64) for k in stored.files if k.endswith("/errors")}
    return cells, stored["labels"]


def compare(stopped: dict, full: dict, figures=FIGURES) -> dict:
  """A stopped run's figures against the full budget's: differences (AUC, misclassification AUROC, accuracies),
  ratios (AURC)."""
  out = {"nfe_per_image": stopped["nfe_per_image"], "full_nfe_per_image": full["nfe_per_image"]}
  for name in ("vote", "mean"):
    for figure in figures:
      key = f"{name}_{figure}"
      if stopped[key] is None or full[key] is None:
        out[f"{key}_change"] = None
      elif figure == "aurc":
        out[f"{key}_change"] = stopped[key] / full[key] if full[key] > 0 else None
      else:
        out[f"{key}_change"] = stopped[key] - full[key]
  return out


def group_means(per_cell: dict[str, dict]) -> dict[str, dict]:
  """Per group of cells (`group`): the mean of every numeric figure of the cells' rows (None where a cell has none)
  and the number of cells."""
  grouped = {}
  for cell, row in per_cell.items():
    grouped.setdefault(group(cell), []).append(row)
  out = {}
  for key, rows in grouped.items():
    means = {}
    for figure, value in rows[0].items():
      if isinstance(value, bool):
        continue
      values = [r[figure] for r in rows]
      means[figure] = float(np.mean(values)) if None not in values else None
    out[key] = means | {"cells": len(rows)}
  return out


def replay_cells(cells: dict[str, np.ndarray], labels: np.ndarray, orders: int, seed: int = 0) -> dict:
  """Every rule of `RULES` on every cell against that cell's full budget (`compare`, and whether the target holds),
  and per rule the means over the cells of each group (`group`)."""
  if "clean" not in cells:
    raise SystemExit("error: the draws have no clean cell to fit the temperature on")
  temperature = metrics.fit_temperature(-cells["clean"].mean(axis=2), labels)
  target = draw_analysis.STOPPING_TARGET | {"cost_share": 1.0}
  per_cell = {}
  for cell, errors in sorted(cells.items()):
    per_cell[cell] = {}
    for name, setting in RULES.items():
      out = replay(errors, labels, setting, temperature, orders, seed)
      met = draw_analysis.stopping_target_met(out["stopped"], out["full_budget"], target)
      per_cell[cell][name] = compare(out["stopped"], out["full_budget"]) | {"target_met": met["all"]}
  summary = {}
  for name in RULES:
    summary[name] = group_means({cell: rows[name] for cell, rows in per_cell.items()})
    for key, means in summary[name].items():
      met = [per_cell[cell][name]["target_met"] for cell in per_cell if group(cell) == key]
      means["cells_meeting_target"] = int(sum(met))
  return {
    "orders": orders,
    "seed": seed,
    "temperature": temperature,
    "target": target,
    "summary": summary,
    "cells": per_cell,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("errors", help="A shift run's cells/model folder or a gathered errors npz.")
  parser.add_argument("--orders", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--gather", metavar="NPZ", help="Also write a cell folder's draws to this npz (docs/shift/).")
  args = parser.parse_args()
  if args.gather:
    if not os.path.isdir(args.errors):
      raise SystemExit(f"error: --gather needs a shift run's cells/model folder, not {args.errors}")
    gather(args.errors, args.gather)
  cells, labels = load_cells(args.errors)
  print(json.dumps({"errors": args.errors} | replay_cells(cells, labels, args.orders, args.seed), indent=1))


if __name__ == "__main__":
  main()
