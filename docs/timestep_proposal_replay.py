r"""Would drawing t from an informative proposal pay? Replayed on the stored draws of `medfusion.sweep`.

  python docs/timestep_proposal_replay.py docs/pneumoniamnist/errors_val_k64.npz

Each image's K draws are resampled (with replacement, 20 times) from its stored stratified draws, with
probabilities proportional to a weight of the tenth of [0, 1] its t falls in: equal weights (the baseline), or
(2a - 1)^p of the tenth's single-draw accuracy a (`draw_analysis.t_profile`), p = 1, 2, 4. Prints, per K and
proposal, the vote accuracy, the mean-error accuracy without and with importance weights (which keep the
uniform-t mean), and the evaluations per image of the predictive early-stopping rule (delta 0.02, rounds of 2).
"""

import argparse

import numpy as np

from medfusion.classify import aggregate
from medfusion.evaluation import draw_analysis


def replay(errors, t, labels, weights, k, repeats=20, seed=0):
  n, c, stored = errors.shape
  bins = np.clip((t * len(weights)).astype(int), 0, len(weights) - 1)
  prob = weights[bins] / weights[bins].sum(axis=1, keepdims=True)
  importance = weights.mean() / weights[bins]  # uniform density over the proposal's, per stored draw
  rule = aggregate.StoppingRule.build("predictive", k, 2, c, 0.02)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(repeats):
    picked = np.stack([rng.choice(stored, k, p=prob[i]) for i in range(n)])
    e = np.take_along_axis(errors, picked[:, None, :], axis=2)
    w = np.take_along_axis(importance, picked, axis=1)
    votes, means = draw_analysis._running_totals(e)
    sums, grams = draw_analysis._running_sums(e)
    used = np.full(n, k)
    for stop in range(2, k, 2):
      at = stop - 1
      used[(used == k) & rule.decided(votes[:, :, at], np.full(n, k - stop), sums[:, :, at], grams[..., at])] = stop
    vote = draw_analysis._vote_after(votes, means, np.full(n, k))
    weighted = (e * w[:, None, :]).sum(axis=2) / w.sum(axis=1)[:, None]
    out.append([np.mean(vote == labels), np.mean(means[:, :, -1].argmin(1) == labels)])
    out[-1] += [np.mean(weighted.argmin(1) == labels), c * used.mean()]
  return np.mean(out, axis=0)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("errors_npz")
  args = parser.parse_args()
  with np.load(args.errors_npz) as stored:
    errors, t, labels = stored["errors"], stored["t"], stored["labels"]
  accuracy = np.array(draw_analysis.t_profile(errors, t, labels, 10)["accuracy"], dtype=float)
  proposals = {"equal": np.ones(10), **{f"(2a-1)^{p}": (2 * accuracy - 1) ** p for p in (1, 2, 4)}}
  for k in (8, 16, 32, 64):
    for name, weights in proposals.items():
      vote, mean, weighted, nfe = replay(errors, t, labels, weights, k)
      print(
        f"K={k:2d} {name:9s} vote {vote:.4f}  mean {mean:.4f}  mean, importance-weighted {weighted:.4f}  "
        f"evaluations/image (predictive) {nfe:.1f}"
      )


if __name__ == "__main__":
  main()
