"""The pure parts of medfusion.evaluation.draw_analysis: accuracy against K and t on hand-made error tensors."""

import numpy as np
import pytest

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
  rule stops the unanimous images at its first chance (4 draws at delta 0.05: P(flip) ~ 2^-5) and the tied one
  only at the budget; min_draws = 10 holds them to 10."""
  k = 16
  errors = np.zeros((3, 2, k))
  errors[0, 1], errors[1, 0] = 1.0, 1.0
  errors[2, 0, 0::2], errors[2, 1, 1::2] = 1.0, 0.9
  labels = np.array([0, 0, 1])
  result = draw_analysis.early_stop_sweep(errors, labels, [0.05], 2)
  assert set(result) >= {"exact", "bonferroni", "predictive", "full_budget_aurc"}
  predictive = result["predictive"]
  assert predictive["mean_draws"] == [(4 + 4 + 16) / 3]
  assert predictive["agreement"] == [1.0] and predictive["accuracy"] == [2 / 3]
  # One wrong image held with full confidence among three: the same risk-coverage curve as the full budget.
  assert predictive["aurc"] == [result["full_budget_aurc"]]
  held = draw_analysis.early_stop_sweep(errors, labels, [0.05], 2, min_draws=10)["predictive"]
  assert held["mean_draws"] == [(10 + 10 + 16) / 3]
