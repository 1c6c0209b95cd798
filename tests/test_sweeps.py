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
