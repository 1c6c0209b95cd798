"""The pure parts of medfusion.evaluation.draw_analysis: accuracy against K and t on hand-made error tensors."""

import numpy as np
import pytest

from medfusion.classify import aggregate
from medfusion.data import pipeline
from medfusion.evaluation import draw_analysis


def test_k_sweep_uses_prefixes_of_the_draws():
  # Image 0 (label 0): draw 0 favours class 1 by a lot, draws 1-3 favour class 0 by a little.
  # Image 1 (label 1): every draw favours class 1.
  errors = np.array(
    [
      [[0.9, 0.1, 0.1, 0.1], [0.0, 0.2, 0.2, 0.2]],
      [[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]],
    ]
  )
  labels = np.array([0, 1])
  result = draw_analysis.k_sweep(errors, labels, [1, 2, 4])
  assert result["k"] == [1, 2, 4]
  # Mean: image 0's class-0 mean is 0.5, 0.5, 0.3 against 0.0, 0.1, 0.15 for class 1: wrong throughout.
  assert result["mean"] == [0.5, 0.5, 0.5]
  # Vote: k=1 wrong; k=2 tied 1-1, broken by the lower mean error (class 1): wrong; k=4: 3-1 for class 0.
  assert result["vote"] == [0.5, 0.5, 1.0]


def test_t_profile_bins_single_draw_accuracy():
  errors = np.zeros((2, 2, 4))
  errors[:, 1] = 1.0  # every draw picks class 0
  t = np.array([[0.05, 0.15, 0.95, 0.96], [0.05, 0.55, 0.56, 0.99]])
  labels = np.array([0, 1])
  profile = draw_analysis.t_profile(errors, t, labels, num_bins=10)
  assert profile["draws"] == [2, 1, 0, 0, 0, 2, 0, 0, 0, 3]
  assert profile["accuracy"][0] == 0.5 and profile["accuracy"][1] == 1.0 and profile["accuracy"][5] == 0.0
  assert profile["accuracy"][9] == pytest.approx(2 / 3)
  assert profile["accuracy"][2] is None  # no draws in the bin: JSON null
  assert profile["accuracy_by_class"][0][9] == 1.0 and profile["accuracy_by_class"][1][9] == 0.0


def test_in_t_range_keeps_the_draws_in_order_and_rejects_uneven_counts():
  errors = np.arange(2 * 2 * 4, dtype=float).reshape(2, 2, 4)
  t = np.array([[0.05, 0.5, 0.3, 0.95], [0.4, 0.02, 0.97, 0.6]])
  kept, kept_t = draw_analysis.in_t_range(errors, t, 0.1, 0.9, "x.npz")
  np.testing.assert_array_equal(kept_t, [[0.5, 0.3], [0.4, 0.6]])
  np.testing.assert_array_equal(kept[0], errors[0][:, [1, 2]])
  np.testing.assert_array_equal(kept[1], errors[1][:, [0, 3]])
  with pytest.raises(ValueError, match="x.npz: 1 to 2 draws per image"):
    draw_analysis.in_t_range(errors, t, 0.1, 0.55, "x.npz")


def test_prune_sweep_keeps_the_best_classes_and_counts_evaluations():
  # Three classes, 4 draws. Image 0 (label 2): class 0 leads on draws 0-1 only; class 2 wins the rest.
  # Image 1 (label 1): class 1 best throughout.
  errors = np.array(
    [
      [[0.1, 0.1, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1]],
      [[0.4, 0.4, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.3, 0.3]],
    ]
  )
  labels = np.array([2, 1])
  result = draw_analysis.prune_sweep(errors, labels, [((2, 2), (2, 2)), ((2, 1), (2, 1))])
  assert result["nfe_per_image"] == [2 * 3 + 2 * 2, 2 * 3 + 2 * 1]
  # keep 2 after draws 0-1: classes 0 and 2 go on; over all 4 draws class 2 (0.15) beats class 0 (0.5)
  assert result["mean_accuracy"][0] == 1.0 and result["agreement"][0] == 1.0
  # keep 1: image 0 keeps class 0 (the early leader) and is wrong; image 1 is right
  assert result["mean_accuracy"][1] == 0.5 and result["vote_accuracy"][1] == 0.5


def test_early_stop_sweep_replays_each_rule_with_its_cost_agreement_and_aurc():
  """Image 0 is unanimous for class 0 (right), image 1 unanimous for class 1 (wrong), image 2 alternates, a tied
  vote that class 1 (its label) takes on the lower mean error. With looks every 2 draws out of 16 the predictive
  rule stops the unanimous images at its first chance (the mean part's minimum of 12 draws; the vote part alone
  would stop at 4) and the tied one only at the budget; min_draws = 14 holds them to 14."""
  k = 16
  errors = np.zeros((3, 2, k))
  errors[0, 1], errors[1, 0] = 1.0, 1.0
  errors[2, 0, 0::2], errors[2, 1, 1::2] = 1.0, 0.9
  labels = np.array([0, 0, 1])
  result = draw_analysis.early_stop_sweep(errors, labels, [0.05], 2)
  assert set(result) >= {"exact", "bonferroni", "predictive", "full_budget_aurc"}
  predictive = result["predictive"]
  assert aggregate.PREDICTIVE_MEAN_MIN_DRAWS == 12
  assert predictive["mean_draws"] == [(12 + 12 + 16) / 3]
  assert predictive["agreement"] == [1.0] and predictive["accuracy"] == [2 / 3]
  # One wrong image held with full confidence among three: the same risk-coverage curve as the full budget.
  assert predictive["aurc"] == [result["full_budget_aurc"]]
  held = draw_analysis.early_stop_sweep(errors, labels, [0.05], 2, min_draws=14)["predictive"]
  assert held["mean_draws"] == [(14 + 14 + 16) / 3]


def test_half_split_is_fixed_disjoint_and_stratified():
  labels = np.repeat([0, 1, 2], [7, 20, 3])
  a, b = pipeline.half_split(labels, seed=0)
  assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(len(labels)))
  for c, size in ((0, 7), (1, 20), (2, 3)):  # every class in both halves, split within one image
    in_a = np.sum(labels[a] == c)
    assert abs(2 * in_a - size) <= 1 and 0 < in_a < size
  again, _ = pipeline.half_split(labels, seed=0)
  other, _ = pipeline.half_split(labels, seed=1)
  assert np.array_equal(a, again) and not np.array_equal(a, other)


def test_half_split_protocol_chooses_on_one_half_and_reports_the_other():
  """A 'setting' that memorises its selection half: it scores 1 there and 0 elsewhere, so reporting on the other
  half shows what choosing on the reported images would hide."""
  labels = np.tile([0, 1], 10)
  seen = []

  def choose(indices):
    seen.append(set(indices.tolist()))
    return sorted(indices.tolist())

  def report(indices, setting):
    return {"score": float(np.isin(indices, setting).mean()), "name": "not a number"}

  result = draw_analysis.half_split_protocol(labels, choose, report, seed=3)
  a, b = pipeline.half_split(labels, seed=3)
  assert seen == [set(a.tolist()), set(b.tolist())]
  for direction in result["directions"]:
    assert direction["selection"]["score"] == 1.0 and direction["reporting"]["score"] == 0.0
    assert direction["difference"] == {"score": -1.0}  # numbers only
  assert result["halves"] == [10, 10]


def test_reorderings_permute_each_images_draws_and_keep_the_stored_order_first():
  orders = draw_analysis.reorderings(5, 8, 4, seed=0)
  assert orders.shape == (4, 5, 8)
  np.testing.assert_array_equal(orders[0], np.tile(np.arange(8), (5, 1)))
  assert all(np.array_equal(np.sort(row), np.arange(8)) for row in orders.reshape(-1, 8))
  assert not np.array_equal(orders[1], orders[2])
  np.testing.assert_array_equal(orders, draw_analysis.reorderings(5, 8, 4, seed=0))


def _order_sensitive_errors(k=16):
  """Image 0: class 0 wins its first k/2 draws narrowly, class 1 its last k/2 widely (a tie the mean gives to
  class 1); images 1 and 2: unanimous for their class."""
  errors = np.zeros((3, 2, k))
  errors[0, 1, : k // 2], errors[0, 0, k // 2 :] = 0.1, 1.0
  errors[1, 1], errors[2, 0] = 1.0, 1.0
  return errors, np.array([1, 0, 1])


def test_reordered_stopping_reports_disagreement_as_a_rate_over_orders():
  """In the stored order image 0 looks unanimous for class 0 long enough to stop (the vote part at a loose delta),
  where the full budget ties and the mean picks class 1: one order's count says 1 of 3. Over many orders its early
  draws are mixed and it rarely stops: the rate is lower, and reported as such."""
  errors, labels = _order_sensitive_errors()
  rule = aggregate.StoppingRule.build("exact", 16, 2, 2, 0.5)
  exact = draw_analysis.reordered_stopping(errors, labels, rule, 2, 1.0, orders=20)
  assert exact["stopped"]["vote_disagreement"] == 0.0  # exact never stops on a vote that could change
  loose = aggregate.StoppingRule(
    adaptive="sequential", delta=0.5, boundaries=tuple([n + 1 for n in range(4)] + [4] * 13)
  )
  stored = draw_analysis.reordered_stopping(errors, labels, loose, 2, 1.0, orders=1)
  many = draw_analysis.reordered_stopping(errors, labels, loose, 2, 1.0, orders=50)
  assert stored["stopped"]["vote_disagreement"] == pytest.approx(1 / 3)
  assert stored["stopped"]["orders_with_a_differing_vote"] == 1.0
  assert 0.0 < many["stopped"]["vote_disagreement"] < 1 / 3
  assert many["full_budget"]["nfe_per_image"] == 32.0 and many["stopped"]["nfe_per_image"] < 32.0
  assert many["orders"] == 50 and many["rule"]["adaptive"] == "sequential"


def test_stopping_target_checks_each_figure_against_the_full_budget():
  full = {"nfe_per_image": 128.0}
  for name in ("vote", "mean"):
    full |= {f"{name}_auc": 0.99, f"{name}_aurc": 0.01, f"{name}_misclassification_auroc": 0.9}
  good = dict(full, nfe_per_image=50.0, vote_auc=0.986, mean_aurc=0.0109, mean_misclassification_auroc=0.881)
  assert draw_analysis.stopping_target_met(good, full)["all"]
  for key, value in (("nfe_per_image", 52.0), ("vote_auc", 0.984), ("mean_aurc", 0.0111), ("vote_aurc", None)):
    checks = draw_analysis.stopping_target_met(dict(good, **{key: value}), full)
    assert not checks["all"] and sum(not v for k, v in checks.items() if k != "all") == 1, key


def test_decision_scores_match_scikit_learn():
  from sklearn import metrics as skm

  rng = np.random.default_rng(0)
  for c in (2, 4):
    labels = rng.integers(0, c, 200)
    probs = rng.dirichlet(np.ones(c), 200)
    probs[:, 0] = np.round(probs[:, 0], 1)  # ties
    scores = draw_analysis.decision_scores(labels, probs)
    auc = np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in range(c)]) if c > 2 else None
    auc = skm.roc_auc_score(labels, probs[:, 1]) if c == 2 else auc
    assert scores["macro_auc"] == pytest.approx(auc)
    preds = probs.argmax(axis=1)
    assert scores["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert scores["accuracy"] == pytest.approx(np.mean(preds == labels))
