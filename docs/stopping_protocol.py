r"""The adaptive stopping default chosen without tuning on what it reports (issue 21's protocol), on stored draws.

  python docs/stopping_protocol.py docs/pneumoniamnist/errors_val_k64.npz

The split's images are halved (`pipeline.half_split`, seed 0, stratified by class). On one half every candidate
rule (the predictive rule over delta, round size R, minimum draws M, and the confidence floors that keep an image
going while the full budget could still rank it among the uncertain ones) is replayed on `--select_orders` orders
of the draws; the cheapest that meets `draw_analysis.STOPPING_TARGET` against the full budget on that half is
chosen (none: the full budget). The choice is then reported on the other half over `--orders` re-orderings
(disagreement with the full budget as a rate), and the reverse. The shipped rule and the full budget are reported
beside it on both halves. Prints JSON.

  python docs/stopping_protocol.py docs/pneumoniamnist/errors_val_k64.npz --whole [--mean_min_draws=2]

instead replays a few named rules on the whole split over `--orders` orders (`--mean_min_draws=2`: the rule as it
was before the mean part waited for `aggregate.PREDICTIVE_MEAN_MIN_DRAWS` draws).
"""

import argparse
import itertools
import json

import numpy as np

from medfusion import metrics
from medfusion.classify import aggregate
from medfusion.evaluation import draw_analysis

DELTAS, ROUNDS, MIN_DRAWS = (0.01, 0.02, 0.05, 0.1), (2, 4), (0, 16)
FLOORS = ((0.0, 0.0), (0.7, 0.0), (0.0, 0.03), (0.7, 0.03), (0.0, 0.05))  # (share_floor, margin_floor)
SHIPPED = {"adaptive": "predictive", "delta": 0.02, "draws_per_round": 2, "min_draws": 0, "floors": [0.0, 0.0]}
FULL = {"adaptive": "none", "delta": 0.02, "draws_per_round": 2, "min_draws": 0, "floors": [0.0, 0.0]}
WHOLE = {
  "predictive, delta 0.02, R 2": SHIPPED,
  "predictive, delta 0.02, R 2, M 16": SHIPPED | {"min_draws": 16},
  "predictive, delta 0.02, R 2, M 32": SHIPPED | {"min_draws": 32},
  "predictive, delta 0.05, R 2, share floor 0.7": SHIPPED | {"delta": 0.05, "floors": [0.7, 0.0]},
  "predictive, delta 0.05, R 2, margin floor 0.03": SHIPPED | {"delta": 0.05, "floors": [0.0, 0.03]},
  "predictive, delta 0.02, R 2, margin floor 0.05": SHIPPED | {"floors": [0.0, 0.05]},
  "predictive, delta 0.02, R 2, share floor 0.8": SHIPPED | {"floors": [0.8, 0.0]},
}


def candidates():
  for delta, r, m, floors in itertools.product(DELTAS, ROUNDS, MIN_DRAWS, FLOORS):
    yield {"adaptive": "predictive", "delta": delta, "draws_per_round": r, "min_draws": m, "floors": list(floors)}


def replay(errors, labels, setting, temperature, orders, seed):
  n, c, k = errors.shape
  share, margin = setting["floors"]
  r = setting["draws_per_round"]
  rule = aggregate.StoppingRule.build(
    setting["adaptive"], k, r, c, setting["delta"], setting["min_draws"], share_floor=share, margin_floor=margin
  )
  return draw_analysis.reordered_stopping(errors, labels, rule, r, temperature, orders, seed)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("errors")
  parser.add_argument("--select_orders", type=int, default=10)
  parser.add_argument("--orders", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--whole", action="store_true", help="Named rules on the whole split, no selection.")
  parser.add_argument("--mean_min_draws", type=int, default=aggregate.PREDICTIVE_MEAN_MIN_DRAWS)
  parser.add_argument(
    "--cost_share",
    type=float,
    default=draw_analysis.STOPPING_TARGET["cost_share"],
    help="The target's cost limit (1: what the other figures alone cost).",
  )
  args = parser.parse_args()
  aggregate.PREDICTIVE_MEAN_MIN_DRAWS = args.mean_min_draws
  target = draw_analysis.STOPPING_TARGET | {"cost_share": args.cost_share}
  with np.load(args.errors) as stored:
    errors, labels = stored["errors"].astype(np.float64), stored["labels"]
  if args.whole:
    temperature = metrics.fit_temperature(-errors.mean(axis=2), labels)
    rows = {}
    for name, setting in WHOLE.items():
      out = replay(errors, labels, setting, temperature, args.orders, args.seed)
      rows[name] = out["stopped"] | {
        "target_met": draw_analysis.stopping_target_met(out["stopped"], out["full_budget"])
      }
    rows["full budget"] = out["full_budget"]
    print(json.dumps({"mean_min_draws": args.mean_min_draws, "orders": args.orders, "rules": rows}, indent=1))
    return
  temperatures = {}

  def temperature(indices):  # fitted on the selection half's full budget; AUCs and AURCs do not depend on it
    key = tuple(indices[:3])
    if key not in temperatures:
      temperatures[key] = metrics.fit_temperature(-errors[indices].mean(axis=2), labels[indices])
    return temperatures[key]

  def choose(indices):
    e, y, temp = errors[indices], labels[indices], temperature(indices)
    best = None
    for setting in candidates():
      out = replay(e, y, setting, temp, args.select_orders, args.seed)
      if draw_analysis.stopping_target_met(out["stopped"], out["full_budget"], target)["all"]:
        if best is None or out["stopped"]["nfe_per_image"] < best[1]:
          best = (setting, out["stopped"]["nfe_per_image"])
    return FULL if best is None else best[0]

  def report(indices, setting):
    e, y = errors[indices], labels[indices]
    out = replay(e, y, setting, temperature(indices), args.orders, args.seed)
    met = draw_analysis.stopping_target_met(out["stopped"], out["full_budget"], target)
    shipped = replay(e, y, SHIPPED, temperature(indices), args.orders, args.seed)["stopped"]
    return {
      **{f"chosen_{key}": v for key, v in out["stopped"].items()},
      **{f"full_budget_{key}": v for key, v in out["full_budget"].items()},
      **{f"shipped_{key}": v for key, v in shipped.items()},
      "target_met": met,
      "shipped_target_met": draw_analysis.stopping_target_met(shipped, out["full_budget"], target),
    }

  result = draw_analysis.half_split_protocol(labels, choose, report, args.seed)
  result["target"] = target
  result["candidates"] = len(list(candidates()))
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
