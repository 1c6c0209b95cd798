r"""The mean part of the predictive stopping rule on skewed gap streams: how often its early decision differs from
the full budget's, before and after it waits for `aggregate.PREDICTIVE_MEAN_MIN_DRAWS` draws.

  python docs/skewed_gaps.py

Two-class streams of 64 per-draw error gaps (rival minus leader candidate): per image a mean gap drawn from N(0, 1)
plus unit-variance noise that is Gaussian, exponential (skewness 2) or lognormal (sigma 1: skewness 6.2; sigma 1.5:
33), either sign of skew; looks every 2 draws (the shipped round size); 20,000 streams each, seed 0. Also the
sample skewness of the shipped models' own gaps (leader against runner-up over the 64 stored validation draws).
Prints JSON.
"""

import json

import numpy as np
from scipy import stats

from medfusion.classify import aggregate

K, N, ROUND = 64, 20_000, 2


def _lognormal(sigma):
  mean, var = np.exp(sigma**2 / 2), (np.exp(sigma**2) - 1) * np.exp(sigma**2)
  return lambda rng, shape: (rng.lognormal(0.0, sigma, shape) - mean) / np.sqrt(var)


NOISE = {
  "gaussian": lambda rng, shape: rng.standard_normal(shape),
  "exponential": lambda rng, shape: rng.exponential(1.0, shape) - 1.0,
  "exponential, mirrored": lambda rng, shape: 1.0 - rng.exponential(1.0, shape),
  "lognormal sigma 1": _lognormal(1.0),
  "lognormal sigma 1, mirrored": lambda rng, shape: -_lognormal(1.0)(rng, shape),
  "lognormal sigma 1.5": _lognormal(1.5),
}


def disagreement(gaps, delta, min_draws):
  aggregate.PREDICTIVE_MEAN_MIN_DRAWS = min_draws
  errors = np.stack([np.ones_like(gaps), 1.0 + gaps], axis=1)
  sums, grams = np.cumsum(errors, axis=2), np.cumsum(errors[:, :, None, :] * errors[:, None, :, :], axis=3)
  used = np.full(len(gaps), K)
  for s in range(ROUND, K, ROUND):
    going = np.flatnonzero(used == K)
    flip = aggregate.predictive_mean_flip_probability(
      sums[going, :, s - 1], grams[going, ..., s - 1], np.full(going.size, s), np.full(going.size, K - s)
    )
    used[going[flip < delta]] = s
  early = np.take_along_axis(np.cumsum(gaps, axis=1), (used - 1)[:, None], axis=1)[:, 0] > 0
  return float(np.mean(early != (gaps.sum(axis=1) > 0))), float(used.mean())


def main():
  shipped_min = aggregate.PREDICTIVE_MEAN_MIN_DRAWS
  result = {"streams": N, "draws": K, "round": ROUND, "rows": []}
  for name, noise in NOISE.items():
    rng = np.random.default_rng(0)
    gaps = rng.normal(0.0, 1.0, (N, 1)) + noise(rng, (N, K))
    for delta in (0.01, 0.02, 0.05):
      row = {"noise": name, "delta": delta}
      for label, min_draws in (("before", 2), ("now", shipped_min)):
        rate, draws = disagreement(gaps, delta, min_draws)
        row[label] = {"disagreement": rate, "mean_draws": draws}
      result["rows"].append(row)
  for dataset in ("pneumoniamnist", "dermamnist"):
    with np.load(f"docs/{dataset}/errors_val_k64.npz") as stored:
      errors = stored["errors"].astype(np.float64)
    order = np.argsort(errors.mean(axis=2), axis=1)
    rows = np.arange(len(errors))
    gaps = errors[rows, order[:, 1]] - errors[rows, order[:, 0]]
    skew = stats.skew(gaps, axis=1)
    result[f"{dataset}_gap_skewness"] = {
      "median": float(np.median(skew)),
      "q10_q90": np.quantile(skew, [0.1, 0.9]).tolist(),
    }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
