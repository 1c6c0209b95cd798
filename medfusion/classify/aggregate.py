"""Aggregation of per-draw errors into predictions, and the stopping rules of adaptive compute (numpy)."""

import math

import numpy as np
from scipy import stats

ADAPTIVE = ("none", "exact", "sequential")


def votes_from_errors(errors: np.ndarray, evaluated: np.ndarray | None = None) -> np.ndarray:
  """Each draw votes for its lowest-error class: errors [B, C, R] -> vote counts [B, C].

  `evaluated` [B, C] (bool) restricts the vote to the classes evaluated for each image (class pruning).
  Exact ties go to the lower class index.
  """
  if evaluated is not None:
    errors = np.where(evaluated[:, :, None], errors, np.inf)
  winners = np.argmin(errors, axis=1)  # [B, R]
  num_classes = errors.shape[1]
  return (winners[:, None, :] == np.arange(num_classes)[None, :, None]).sum(axis=2)


def mean_prediction(mean_errors: np.ndarray) -> np.ndarray:
  """Li et al. 2023: the class with the lowest mean error over draws."""
  return np.argmin(mean_errors, axis=1)


def vote_prediction(votes: np.ndarray, mean_errors: np.ndarray) -> np.ndarray:
  """Favero et al. 2025: the class with the most votes; a tie goes to the lower mean error."""
  tied = votes == votes.max(axis=1, keepdims=True)
  return np.argmin(np.where(tied, mean_errors, np.inf), axis=1)


def _leader_and_runner_up(votes: np.ndarray):
  order = np.argsort(-votes, axis=1, kind="stable")
  rows = np.arange(len(votes))
  return votes[rows, order[:, 0]], votes[rows, order[:, 1]]


def exact_vote_decided(votes: np.ndarray, draws_left: np.ndarray) -> np.ndarray:
  """True where no outcome of the remaining draws can change the vote winner (lead > draws left)."""
  lead, second = _leader_and_runner_up(votes)
  return lead - second > draws_left


def sequential_threshold(num_checks: int, num_classes: int, delta: float) -> float:
  """Per-check p-value threshold: Bonferroni over the checks and the (C - 1) rival classes."""
  return delta / (max(num_checks, 1) * max(num_classes - 1, 1))


def sequential_vote_decided(votes: np.ndarray, num_checks: int, delta: float) -> np.ndarray:
  """True where the leader's vote share is significantly above every rival's, at level `delta` overall.

  Among the draws won by the leader or the runner-up, the leader's count is tested against Binomial(n, 1/2)
  (one-sided exact test); the threshold is corrected for `num_checks` looks at the data, so the chance of
  ever stopping on a class whose true vote probability is not the highest is at most `delta`.
  """
  lead, second = _leader_and_runner_up(votes)
  n = lead + second
  p_value = stats.binom.sf(lead - 1, n, 0.5)
  return (lead > second) & (p_value <= sequential_threshold(num_checks, votes.shape[1], delta))


def num_checks(num_draws: int, draws_per_round: int) -> int:
  return math.ceil(num_draws / draws_per_round)


def decided(votes: np.ndarray, draws_left: np.ndarray, adaptive: str, checks: int, delta: float) -> np.ndarray:
  """The stopping rule of adaptive compute, per image: True where no more draws are needed.

  votes [N, C] after the draws so far, draws_left [N] of the full budget. `none` stops only when the budget is
  spent; `exact` once the vote can no longer change; `sequential` once `sequential_vote_decided` at `delta`.
  """
  done = np.asarray(draws_left) <= 0
  if adaptive == "exact":
    return done | exact_vote_decided(votes, draws_left)
  if adaptive == "sequential":
    return done | sequential_vote_decided(votes, checks, delta)
  if adaptive != "none":
    raise ValueError(f"adaptive={adaptive!r} is not one of {ADAPTIVE}")
  return done
