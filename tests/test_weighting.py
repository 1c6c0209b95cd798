"""Timestep weighting of the mean-error decision: features, fits, JSON and storage, on hand-made error tensors."""

import json

import numpy as np
import pytest

from medfusion import modeldir
from medfusion.classify import weighting
from medfusion.evaluation import draw_analysis


def test_binned_features_centre_each_bin_and_leave_empty_bins_at_zero():
  # one image, 2 classes, 4 draws: two in [0, 0.4), two in [0.4, 0.8) and none in [0.8, 1]
  errors = np.array([[[1.0, 3.0, 5.0, 5.0], [2.0, 2.0, 4.0, 8.0]]])
  t = np.array([[0.1, 0.2, 0.6, 0.7]])
  x = weighting.binned_features(errors, t, np.array([0.0, 0.4, 0.8, 1.0]))
  # bin 0: means 2, 2 -> 0, 0; bin 1: means 5, 6 -> -0.5, 0.5; bin 2: no draws -> 0
  np.testing.assert_allclose(x, [[[0.0, -0.5, 0.0], [0.0, 0.5, 0.0]]])
  # t = t_max falls in the last bin; t outside the edges is ignored
  errors[0, 1, 1] = 4.0
  x = weighting.binned_features(errors, np.array([[1.0, 1.0, 1.2, 0.1]]), np.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(x, [[[-1.5, -0.5], [1.5, 0.5]]])


def _population(n, rng, k=40, c=3):
  """Errors [n, c, k] whose class signal lies in t < 0.5 only: there the true class's error is lower by 0.3; for
  t >= 0.5 every class draws noise five times as wide."""
  labels = rng.integers(0, c, n)
  t = np.tile((np.arange(k) + 0.5) / k, (n, 1))
  informative = t < 0.5
  spread = np.where(informative, 1.0, 5.0)[:, None, :]
  errors = 5.0 + spread * rng.standard_normal((n, c, k))
  errors[np.arange(n), labels] -= 0.3 * informative
  return errors, t, labels


def test_fitted_weights_find_the_informative_timesteps_and_beat_the_plain_mean():
  rng = np.random.default_rng(0)
  fit_set, held_out = _population(600, rng), _population(600, rng)
  shared = weighting.fit(*fit_set, "shared", num_bins=4)
  w = -np.diagonal(np.asarray(shared.weights), axis1=0, axis2=1).T[0]  # class 0's weight per bin
  assert w[:2].min() > 3 * np.abs(w[2:]).max()  # bins of t < 0.5 carry the weight

  def accuracy(logits):
    return np.mean(logits.argmax(axis=1) == held_out[2])

  plain = accuracy(-held_out[0].mean(axis=2))
  for form in weighting.FORMS:
    fitted = weighting.fit(*fit_set, form, num_bins=4)
    assert accuracy(fitted.logits(*held_out[:2])) > (plain + 0.05 if form != "label_free" else plain - 0.05), form


def test_fits_weigh_classes_equally_so_the_prior_is_added_at_use():
  """Class 1 is three times as frequent in the fit set and the errors carry no signal: the balanced fit learns no
  preference (offsets level, about half the images each way at the uniform prior), where an unweighted fit would
  learn the frequency; a prior is then added to the logits as its log."""
  rng = np.random.default_rng(1)
  errors, t, _ = _population(800, rng, c=2)
  labels = (rng.random(800) < 0.75).astype(int)
  for form in ("shared", "per_class"):
    fitted = weighting.fit(errors, t, labels, form, num_bins=2, offsets=True)
    assert abs(fitted.offsets[1] - fitted.offsets[0]) < 0.3, form
    uniform = fitted.logits(errors, t)
    assert abs(np.mean(uniform.argmax(axis=1)) - 0.5) < 0.2, form
    skewed = fitted.logits(errors, t, prior=[0.1, 0.9])
    np.testing.assert_allclose(skewed - uniform, np.tile(np.log([0.1, 0.9]), (800, 1)))
  np.testing.assert_allclose(fitted.fit_prior, np.bincount(labels) / 800)


def test_two_class_per_class_fit_splits_scikit_learns_single_logit():
  from sklearn import linear_model

  rng = np.random.default_rng(2)
  errors, t, labels = _population(300, rng, c=2)
  fitted = weighting.fit(errors, t, labels, "per_class", num_bins=4, offsets=True)
  x = weighting.binned_features(errors, t, np.asarray(fitted.edges)) / np.asarray(fitted.scale)
  balance = 1.0 / (2 * np.bincount(labels)[labels] / 300)
  model = linear_model.LogisticRegression(C=0.1, max_iter=5000).fit(x.reshape(300, -1), labels, sample_weight=balance)
  logits = fitted.logits(errors, t)
  np.testing.assert_allclose(logits[:, 1] - logits[:, 0], model.decision_function(x.reshape(300, -1)), rtol=1e-6)


def test_json_round_trip_and_shape_checks():
  rng = np.random.default_rng(3)
  errors, t, labels = _population(200, rng)
  fitted = weighting.fit(errors, t, labels, "per_class", num_bins=3, offsets=True)
  again = weighting.TimestepWeighting.from_json(json.loads(json.dumps(fitted.to_json())))
  assert again == fitted
  np.testing.assert_array_equal(again.logits(errors, t), fitted.logits(errors, t))
  broken = fitted.to_json() | {"offsets": [0.0, 0.0]}
  with pytest.raises(ValueError, match="do not agree"):
    weighting.TimestepWeighting.from_json(broken)
  with pytest.raises(ValueError, match="form"):
    weighting.TimestepWeighting.from_json(fitted.to_json() | {"form": "cubic"})
  with pytest.raises(ValueError, match="holds 2 of the 3 classes"):
    weighting.fit(errors, t, labels % 2, "shared")
  assert weighting.parse_choice("shared_offsets") == ("shared", True)
  with pytest.raises(ValueError, match="classify.weighting"):
    weighting.parse_choice("none")


def test_stored_weightings_are_keyed_like_the_temperature(tmp_path):
  from configs import pneumoniamnist

  config = pneumoniamnist.get_config()
  config.classify.weighting = "shared"
  key = modeldir.weighting_key(config, 100)
  assert key == modeldir.calibration_key(config, 100) | {"weighting": "shared"}
  assert modeldir.stored_weighting(str(tmp_path), key) is None
  modeldir.store_weighting(str(tmp_path), key, {"form": "shared", "n": 1}, "val (10 images)", 10)
  other = modeldir.weighting_key(config, 200)
  modeldir.store_weighting(str(tmp_path), other, {"form": "shared", "n": 2}, "val", 10)
  modeldir.store_weighting(str(tmp_path), key, {"form": "shared", "n": 3}, "train slice", 10)  # replaces
  assert modeldir.stored_weighting(str(tmp_path), key) == {"form": "shared", "n": 3}
  assert modeldir.stored_weighting(str(tmp_path), other) == {"form": "shared", "n": 2}


def test_weighting_half_split_fits_on_one_half_and_reports_the_other():
  rng = np.random.default_rng(4)
  errors, t, labels = _population(400, rng)
  result = draw_analysis.weighting_half_split(errors, t, labels, "shared", 0.0, 1.0, num_bins=4)
  assert len(result["directions"]) == 2
  for direction in result["directions"]:
    reporting = direction["reporting"]
    assert reporting["weighted_accuracy"] > reporting["mean_accuracy"] + 0.05
    assert set(direction["difference"]) >= {"weighted_macro_auc", "mean_balanced_accuracy"}
