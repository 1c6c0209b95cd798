"""Aggregation of per-draw errors into predictions, and the stopping rules of adaptive compute (numpy)."""

import dataclasses
import functools
import math

import numpy as np
from scipy import stats

ADAPTIVE = ("none", "exact", "sequential", "predictive")


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


STOPPING_BOUNDS = ("exact", "bonferroni")


def _min_count(n: int, level: float) -> int:
  """The smallest count b with P(Binomial(n, 1/2) >= b) <= level (n + 1 when there is none)."""
  tail = stats.binom.sf(np.arange(n + 1) - 1, n, 0.5)  # tail[b] = P(X >= b)
  ok = np.nonzero(tail <= level)[0]
  return int(ok[0]) if ok.size else n + 1


def _crossing_probability(boundaries: np.ndarray) -> float:
  """P(a fair-coin walk ever has max(heads, tails) >= boundaries[n] after n flips), by dynamic programming over
  the counts of the paths that have not stopped yet (boundaries[n] > n: no look at n)."""
  mass, crossed = np.ones(1), 0.0
  for n in range(1, len(boundaries)):
    mass = np.concatenate([mass * 0.5, [0.0]]) + np.concatenate([[0.0], mass * 0.5])  # counts 0..n
    b = boundaries[n]
    if b <= n:
      stop = (np.arange(n + 1) >= b) | (n - np.arange(n + 1) >= b)
      crossed += mass[stop].sum()
      mass = np.where(stop, 0.0, mass)
  return float(crossed)


@functools.lru_cache(maxsize=64)
def vote_boundaries(num_draws: int, draws_per_round: int, num_classes: int, delta: float, method: str = "exact"):
  """b[n] for n = 0..K: the sequential vote test stops once the leader holds at least b[n] of the n draws won by
  the leader or the runner-up, and then the chance of ever stopping on a class whose vote probability is not the
  highest is at most `delta` (Bonferroni over the C - 1 rivals).

  `bonferroni` tests each look at delta / (looks (C - 1)). `exact` gives every look the same nominal level,
  the largest whose exact probability of ever crossing (dynamic programming over the binomial paths of a fair
  coin, both directions) stays within delta / (C - 1): the same guarantee, earlier stops. With two classes the
  looks are the rounds (n = draws_per_round, 2 draws_per_round, ...); with more, n is random, so every n < K is
  treated as a look.
  """
  if method not in STOPPING_BOUNDS:
    raise ValueError(f"method={method!r} is not one of {STOPPING_BOUNDS}")
  k, rivals = num_draws, max(num_classes - 1, 1)
  looks = range(draws_per_round, k, draws_per_round) if num_classes == 2 else range(1, k)
  if method == "bonferroni":
    level = delta / (math.ceil(k / draws_per_round) * rivals)
    return tuple(_min_count(n, level) if n in looks else n + 1 for n in range(k + 1))

  def bounds(level):
    return np.array([_min_count(n, level) if n in looks else n + 1 for n in range(k + 1)])

  lo, hi = math.log(delta / rivals / max(len(looks), 1)), math.log(delta / rivals)  # Bonferroni is always valid
  for _ in range(40):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if _crossing_probability(bounds(math.exp(mid))) <= delta / rivals else (lo, mid)
  return tuple(int(b) for b in bounds(math.exp(lo)))


def sequential_vote_decided(votes: np.ndarray, boundaries) -> np.ndarray:
  """True where the leader holds at least `boundaries[n]` of the n draws won by it or the runner-up."""
  lead, second = _leader_and_runner_up(votes)
  return (lead > second) & (lead >= np.asarray(boundaries)[lead + second])


MIN_GAP_DRAWS = 4  # the t statistic of fewer paired gaps is too unreliable to stop on
# The mean part of the predictive rule says nothing before this many draws: with fewer, skewed gaps (lognormal,
# exponential) flip more often than delta (tests/test_aggregate.py simulates them).
PREDICTIVE_MEAN_MIN_DRAWS = 12


@functools.lru_cache(maxsize=64)
def gap_critical_values(num_draws: int, draws_per_round: int, num_classes: int, delta: float):
  """c[n] for n = 0..K: the paired-gap test stops once, for every rival, the Student t statistic of the per-draw
  error gaps (rival minus leader) reaches c[n] (inf: no look at n). For analysis only (medfusion.sweep replays
  it): on skewed gaps, the shipped model's included, it stops wrongly more often than delta (docs/), so it is not
  a `classify.adaptive` choice.

  A group-sequential t-test (Pocock): every look n = draws_per_round, 2 draws_per_round, ... < K (and n >=
  MIN_GAP_DRAWS) gets the same
  nominal level, the largest at which Gaussian increments with known variance cross |Z| >= z at some look with
  probability delta / (C - 1) (both directions; 400,000 simulated paths, fixed seed); the variance is then
  estimated, so each look uses Student's t quantile with n - 1 degrees of freedom at that level.
  """
  looks = np.arange(draws_per_round, num_draws, draws_per_round)
  looks = looks[looks >= MIN_GAP_DRAWS]
  target = delta / max(num_classes - 1, 1)
  crit = np.full(num_draws + 1, np.inf)
  if looks.size == 0:
    return tuple(crit)
  rng = np.random.default_rng(0)
  walks = np.cumsum(rng.standard_normal((400_000, num_draws)), axis=1)[:, looks - 1] / np.sqrt(looks)
  peak = np.abs(walks).max(axis=1)
  z = float(np.quantile(peak, 1.0 - target))  # P(max_j |Z_j| >= z) = target
  level = stats.norm.sf(z)  # the per-look one-sided nominal level
  crit[looks] = stats.t.isf(level, looks - 1)
  return tuple(crit)


def _paired_gaps(error_sum: np.ndarray, error_gram: np.ndarray, draws: np.ndarray):
  """The mean-error leader [N] and the mean and variance [N, C] of the per-draw error gaps (rival minus leader)
  over `draws` [N] paired draws, from error_sum [N, C] and error_gram [N, C, C] (sums of e_c e_c' over draws)."""
  n = np.asarray(draws, dtype=np.float64)[:, None]
  leader = np.argmin(error_sum, axis=1)
  rows = np.arange(len(leader))
  gap_sum = error_sum - error_sum[rows, leader][:, None]
  diag = np.diagonal(error_gram, axis1=1, axis2=2)
  gap_sq = diag + diag[rows, leader][:, None] - 2 * error_gram[rows, leader]  # sum of squared gaps
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = gap_sum / n
    var = np.maximum(gap_sq - n * mean**2, 0.0) / np.maximum(n - 1, 1)
  return leader, mean, var


def sequential_mean_decided(error_sum: np.ndarray, error_gram: np.ndarray, draws: np.ndarray, critical) -> np.ndarray:
  """True where the leader's mean error is significantly below every rival's (paired t statistics of the per-draw
  gaps against `critical[n]`, `gap_critical_values`), after `draws` [N] paired draws."""
  leader, mean, var = _paired_gaps(error_sum, error_gram, draws)
  rows = np.arange(len(leader))
  with np.errstate(invalid="ignore", divide="ignore"):
    t_stat = mean / np.sqrt(var / np.asarray(draws, dtype=np.float64)[:, None])
  t_stat[rows, leader] = np.inf
  t_stat = np.where(np.isnan(t_stat), -np.inf, t_stat)
  return t_stat.min(axis=1) >= np.asarray(critical)[np.asarray(draws)]


def predictive_mean_flip_probability(error_sum, error_gram, draws, draws_left, margin: float = 0.0) -> np.ndarray:
  """An estimate [N] of the chance that the full budget's mean-error decision will not be today's leader: for
  each rival, the probability that the gaps of the remaining draws bring it level or ahead, under the Student t
  predictive of independent paired gaps (n - 1 degrees of freedom; the mean and variance of the n gaps so far),
  summed over rivals. With `margin` > 0, "level" means within `margin` times the leader's mean error so far: the
  chance of ending with a normalised error margin below `margin` (among the low-confidence images).
  1 before `PREDICTIVE_MEAN_MIN_DRAWS` draws: on skewed gaps (a rare large gap not yet seen)
  the sample variance of few draws is too small and the t predictive too sure (simulated in
  tests/test_aggregate.py, measured in docs/pneumoniamnist.md). With no spread in the gaps, whether the rival is
  behind now."""
  leader, mean, var = _paired_gaps(error_sum, error_gram, draws)
  n, m = np.asarray(draws, dtype=np.float64)[:, None], np.asarray(draws_left, dtype=np.float64)[:, None]
  rows = np.arange(len(leader))
  with np.errstate(invalid="ignore", divide="ignore"):
    floor = margin * np.asarray(error_sum)[rows, leader][:, None] / n  # the margin in error units
  final = (n + m) * (mean - floor)  # the expected gap summed over all draws, less the margin
  scale = np.sqrt(var * (m + m * m / np.maximum(n, 1)))
  with np.errstate(invalid="ignore", divide="ignore"):
    flip = stats.t.sf(final / scale, np.maximum(n - 1, 1))
  flip = np.where(scale > 0, flip, (final <= 0).astype(float))
  flip[rows, leader] = 0.0
  early = (n[:, 0] < PREDICTIVE_MEAN_MIN_DRAWS) & (m[:, 0] > 0)
  return np.where(early, 1.0, flip.sum(axis=1))


def predictive_flip_probability(votes: np.ndarray, draws_left: np.ndarray) -> np.ndarray:
  """An estimate [N] of the chance that the full budget's vote winner will not be today's leader.

  Given an image, its draws are independent and each is won by the leader with some fixed probability, so the
  votes still to come are predictable: with a uniform (Beta(1, 1)) prior on the leader's share p of the draws
  won by it or a rival, the leader's future wins out of m draws are beta-binomial(m, lead + 1, rival + 1). For
  each rival this is the probability that it finishes level with or ahead of the leader when every remaining draw
  goes to the two of them (a level finish counts as lost), summed over rivals. With two classes that is the
  posterior predictive probability itself. With more it is not an upper bound: the sum bounds the union of the
  per-rival events, but a rival's own term is not its worst case, since draws won by a third class change the
  parity of the gap left to close (lead 2, 3 draws left: the rival needs all 3 if they all go to the pair, only
  2 if one goes elsewhere). No remaining draw can change a vote whose lead exceeds them: 0 (the `exact` rule).
  """
  votes, left = np.asarray(votes), np.asarray(draws_left)
  leader = np.argmax(votes, axis=1)
  lead = votes[np.arange(len(votes)), leader][:, None]
  x = np.arange(int(left.max(initial=0)) + 1)[None, :]  # the leader's future wins
  m = left[:, None]
  total = np.zeros(len(votes))
  for rival in range(votes.shape[1]):
    other = votes[:, rival][:, None]
    pmf = stats.betabinom.pmf(x, m, lead + 1, other + 1)  # 0 for x > m
    flips = (pmf * (other + m - x >= lead + x)).sum(axis=1)
    total += np.where(leader == rival, 0.0, flips)
  return total


def predictive_share_below(votes: np.ndarray, draws_left: np.ndarray, floor: float) -> np.ndarray:
  """The chance [N] that today's leader ends the full budget with a vote share below `floor` (a low-confidence
  image): its future wins out of the m draws left are beta-binomial(m, lead + 1, others + 1) (uniform prior on
  its share of all draws). 0 once no draws are left."""
  votes, left = np.asarray(votes), np.asarray(draws_left)
  draws = votes.sum(axis=1)
  lead = votes.max(axis=1)
  below = np.ceil(floor * (draws + left) - lead) - 1  # future wins <= below: final share < floor
  return np.where(left > 0, stats.betabinom.cdf(below, left, lead + 1, draws - lead + 1), 0.0)


@dataclasses.dataclass(frozen=True)
class StoppingRule:
  """The stopping rule of adaptive compute (`config.classify.adaptive`), per image.

  `none` stops only when the budget is spent; `exact` once the vote can no longer change; `sequential` once the
  leader crosses `boundaries` (`vote_boundaries`): it is then the class with the highest vote probability, but for
  a chance of at most delta; `predictive` once the chance that the full budget would decide otherwise is below
  delta for the vote (`predictive_flip_probability`) and for the mean error
  (`predictive_mean_flip_probability`). No rule stops an image before `min_draws` draws.

  The predictive rule watches decisions; its confidence figures then come from fewer draws than the full budget's,
  which changes how images rank by confidence. `share_floor` and `margin_floor` (0: off) also keep an image going
  while the full budget could still put it among the low-confidence images: a vote share below `share_floor`
  (`predictive_share_below`) or a normalised error margin below `margin_floor` (`predictive_mean_flip_probability`
  with a margin), each with chance delta or more. Images that may end uncertain then get the full budget's draws.
  The floors are options of the replays (medfusion.sweep, docs/stopping_protocol.py), not `classify` fields.
  """

  adaptive: str
  delta: float = 0.0
  min_draws: int = 0
  boundaries: tuple[int, ...] | None = None
  share_floor: float = 0.0
  margin_floor: float = 0.0

  @classmethod
  def build(
    cls,
    adaptive,
    num_draws,
    draws_per_round,
    num_classes,
    delta,
    min_draws=0,
    bounds: str = "exact",
    share_floor: float = 0.0,
    margin_floor: float = 0.0,
  ):
    """The rule for K = `num_draws` draws looked at every `draws_per_round`; `bounds` of the sequential test."""
    if adaptive not in ADAPTIVE:
      raise ValueError(f"adaptive={adaptive!r} is not one of {ADAPTIVE}")
    if not (0.0 <= share_floor < 1.0 and margin_floor >= 0.0):
      raise ValueError(f"share_floor={share_floor!r} must be in [0, 1) and margin_floor={margin_floor!r} >= 0")
    boundaries = None
    if adaptive == "sequential":
      boundaries = vote_boundaries(num_draws, draws_per_round, num_classes, delta, bounds)
    return cls(adaptive, delta, min_draws, boundaries, float(share_floor), float(margin_floor))

  def decided(self, votes, draws_left, error_sum=None, error_gram=None) -> np.ndarray:
    """True where no more draws are needed: votes [N, C] after the draws so far, draws_left [N] of the budget; the
    `predictive` rule also needs their error_sum [N, C] and error_gram [N, C, C] (`Tally`)."""
    done = np.asarray(draws_left) <= 0
    if self.adaptive == "none":
      return done
    draws = np.asarray(votes).sum(axis=1)  # every draw votes for one class
    if self.adaptive == "exact":
      stop = exact_vote_decided(votes, draws_left)
    elif self.adaptive == "sequential":
      stop = sequential_vote_decided(votes, self.boundaries)
    else:
      stop = (predictive_flip_probability(votes, draws_left) < self.delta) & (
        predictive_mean_flip_probability(error_sum, error_gram, draws, draws_left) < self.delta
      )
      if self.share_floor > 0:
        stop &= predictive_share_below(votes, draws_left, self.share_floor) < self.delta
      if self.margin_floor > 0:
        stop &= (
          predictive_mean_flip_probability(error_sum, error_gram, draws, draws_left, self.margin_floor) < self.delta
        )
    return done | (stop & (draws >= self.min_draws))
