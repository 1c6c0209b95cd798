"""Tests for medfusion.metrics and medfusion.plots on small hand-made cases with known answers."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from medfusion import metrics, plots


def test_perfect_classifier():
  labels = np.array([0, 1, 0, 1, 1])
  probs = np.where(np.eye(2)[labels] == 1, 0.99, 0.01)
  result = metrics.classification_metrics(labels, probs)
  assert set(result) == {
    "accuracy",
    "balanced_accuracy",
    "auc",
    "f1",
    "precision",
    "recall",
    "specificity",
    "ece",
    "aurc",
  }
  for key in ("accuracy", "balanced_accuracy", "auc", "f1", "precision", "recall", "specificity"):
    assert result[key] == pytest.approx(1.0), key
  assert result["ece"] == pytest.approx(0.01)
  assert result["aurc"] == 0.0


def test_binary_specificity_precision_recall():
  labels = np.array([0, 0, 0, 1, 1])
  preds = np.array([0, 1, 0, 1, 0])
  probs = np.full((5, 2), 0.5)
  result = metrics.classification_metrics(labels, probs, preds=preds)
  assert result["specificity"] == pytest.approx(2 / 3)  # TN = 2, FP = 1.
  assert result["recall"] == pytest.approx(1 / 2)  # TP = 1, FN = 1.
  assert result["precision"] == pytest.approx(1 / 2)  # TP = 1, FP = 1.
  assert result["accuracy"] == pytest.approx(3 / 5)
  assert result["auc"] == pytest.approx(0.5)


def test_multiclass_specificity_is_one_vs_rest_macro():
  labels = np.array([0, 0, 1, 1, 2, 2])
  preds = np.array([0, 1, 1, 1, 2, 0])
  probs = np.full((6, 3), 1 / 3)
  # Each class has 4 negatives; false positives: class 0 one (sample 5), class 1 one (sample 1), class 2 none.
  expected = np.mean([3 / 4, 3 / 4, 4 / 4])
  assert metrics.classification_metrics(labels, probs, preds=preds)["specificity"] == pytest.approx(expected)


def test_multiclass_auc_matches_sklearn_macro_ovr():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=200)
  probs = rng.dirichlet(np.ones(3), size=200) + 0.3 * np.eye(3)[labels]
  probs /= probs.sum(axis=1, keepdims=True)
  expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  assert metrics.classification_metrics(labels, probs)["auc"] == pytest.approx(expected)


@pytest.mark.filterwarnings("error")  # scikit-learn's warnings about undefined scores stay off the console
def test_auc_is_nan_with_one_class_and_strict_json_says_why():
  labels = np.zeros(4, dtype=int)
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
  result = metrics.classification_metrics(labels, probs)
  assert math.isnan(result["auc"])
  report = metrics.per_class_report(labels, probs, np.array([0, 0, 1, 0]), ["normal", "pneumonia"])
  strict, undefined = metrics.with_nulls({"vote": result, "classes": report, "n": 4, "ok": [1.0, float("inf")]})
  assert strict["vote"]["auc"] is None and strict["classes"]["per_class"]["pneumonia"]["auc"] is None
  assert strict["n"] == 4 and strict["ok"] == [1.0, None] and strict["vote"]["accuracy"] == result["accuracy"]
  assert undefined["vote.auc"] == "undefined: the images compared hold only one class"
  assert "classes.per_class.pneumonia.auc" in undefined and "ok[1]" in undefined
  json.dumps(strict, allow_nan=False)  # strict JSON


def test_ece_two_bins_by_hand():
  labels = np.array([0, 1, 0, 0])
  probs = np.array([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.7, 0.2, 0.1]])
  # Bin (0, 0.5]: accuracy 1/2, mean confidence 0.4. Bin (0.5, 1]: accuracy 1, mean confidence 0.8.
  expected = 0.5 * abs(0.5 - 0.4) + 0.5 * abs(1.0 - 0.8)
  assert metrics.expected_calibration_error(labels, probs, num_bins=2) == pytest.approx(expected)


def test_risk_coverage_and_aurc_by_hand():
  # By confidence 0.9, 0.8, 0.7, 0.6 the predictions are right, wrong, right, right; given shuffled.
  correct = np.array([True, True, False, True])
  confidence = np.array([0.6, 0.9, 0.8, 0.7])
  coverage, risk = metrics.risk_coverage(correct, confidence)
  np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 1 / 4])
  assert metrics.aurc(correct, confidence) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_risk_coverage_ties_do_not_depend_on_order():
  confidence = np.array([0.9, 0.5, 0.5])
  _, risk = metrics.risk_coverage([True, True, False], confidence)
  _, risk_swapped = metrics.risk_coverage([True, False, True], confidence)
  # The tied pair holds one error: half an error expected once one of the two is kept.
  np.testing.assert_allclose(risk, [0.0, 0.5 / 2, 1 / 3])
  np.testing.assert_allclose(risk_swapped, risk)


def test_accuracy_at_coverage():
  correct = np.array([True, True, False, True])
  confidence = np.array([0.6, 0.9, 0.8, 0.7])
  assert metrics.accuracy_at_coverage(correct, confidence, 0.25) == pytest.approx(1.0)
  assert metrics.accuracy_at_coverage(correct, confidence, 0.5) == pytest.approx(0.5)
  assert metrics.accuracy_at_coverage(correct, confidence, 1.0) == pytest.approx(0.75)
  # 0.7 * 10 is 7.000000000000001 in floating point; still keeps exactly 7 of 10.
  ten = np.arange(10) < 7
  assert metrics.accuracy_at_coverage(ten, -np.arange(10.0), 0.7) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="coverage"):
    metrics.accuracy_at_coverage(correct, confidence, 0.0)


def test_confidence_argument_drives_aurc():
  labels = np.array([0, 1, 0, 1])
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])  # Samples 1 and 2 are wrong.
  honest = metrics.classification_metrics(labels, probs, confidence=[1.0, 0.1, 0.1, 1.0])
  assert honest["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
  with pytest.raises(ValueError, match="confidence"):
    metrics.classification_metrics(labels, probs, confidence=[1.0, 0.5])


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_fit_temperature_recovers_known_temperature(scale):
  rng = np.random.default_rng(1)
  true_temperature = 2.0
  logits = rng.normal(scale=3.0, size=(20000, 4))
  labels = np.argmax(logits / true_temperature + rng.gumbel(size=logits.shape), axis=1)  # ~ softmax(z / T).
  fitted = metrics.fit_temperature(scale * logits, labels)
  assert fitted == pytest.approx(scale * true_temperature, rel=0.2)


def test_fit_temperature_ignores_images_whose_true_class_was_ruled_out():
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=3.0, size=(4000, 3))
  labels = np.argmax(logits / 2.0 + rng.gumbel(size=logits.shape), axis=1)
  reference = metrics.fit_temperature(logits, labels)
  ruled_out = logits.copy()
  extra = np.full((50, 3), 1.0)
  extra[:, 0] = -np.inf  # class 0 was never a candidate for these images, yet it is their label
  fitted = metrics.fit_temperature(np.concatenate([ruled_out, extra]), np.concatenate([labels, np.zeros(50, int)]))
  assert np.isfinite(fitted) and fitted == pytest.approx(reference, rel=1e-4)


def test_degenerate_temperature_fits_are_flagged():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  no_signal = np.zeros((200, 2))  # an untrained model: every class the same error
  assert metrics.temperature_is_degenerate(metrics.fit_temperature(no_signal, labels))
  informative = np.stack([-labels, labels - 1], axis=1) * 0.01 + rng.normal(0, 0.01, (200, 2))
  assert not metrics.temperature_is_degenerate(metrics.fit_temperature(informative, labels))


def test_softmax_with_temperature_is_stable():
  probs = metrics.softmax_with_temperature(np.array([[1000.0, 0.0], [-1e-3, 0.0]]), 1e-3)
  np.testing.assert_allclose(probs, [[1.0, 0.0], [1 / (1 + math.e), math.e / (1 + math.e)]])
  with pytest.raises(ValueError, match="temperature"):
    metrics.softmax_with_temperature(np.zeros((1, 2)), 0.0)


def test_vote_entropy():
  np.testing.assert_allclose(metrics.vote_entropy([[5, 0], [1, 1], [2, 2]]), [0.0, math.log(2), math.log(2)])


def test_normalised_margin():
  margin = metrics.normalised_margin([[3.0, 1.0, 1.5], [0.0, 0.1, 0.2]])
  assert margin[0] == pytest.approx(0.5)
  assert np.isfinite(margin[1]) and margin[1] > 1e9


def test_plots_write_readable_png_and_no_temp_files(tmp_path):
  coverage, risk = metrics.risk_coverage([True, False, True, True], [0.9, 0.8, 0.7, 0.6])
  risk_path = tmp_path / "risk.png"
  plots.save_risk_coverage_png(risk_path, {"vote": (coverage, risk), "mean": (coverage, risk[::-1])}, "test")
  plots.save_risk_coverage_png(risk_path, {"vote": (coverage, risk)}, "overwritten")
  line_path = tmp_path / "sub" / "lines.png"
  ys = {"accuracy": [0.5, 0.6, 0.7, 0.8]}
  plots.save_line_plot_png(line_path, [1, 2, 4, 8], ys, "draws", "accuracy", "t", logx=True)
  for path in (risk_path, line_path):
    with Image.open(path) as image:
      assert image.format == "PNG"
      image.verify()
  assert sorted(os.listdir(tmp_path)) == ["risk.png", "sub"]
  assert os.listdir(tmp_path / "sub") == ["lines.png"]
  with pytest.raises(ValueError, match="ys"):
    plots.save_line_plot_png(tmp_path / "bad.png", [1, 2], {"accuracy": [0.5]}, "x", "y", "t")
  assert not (tmp_path / "bad.png").exists()


def test_per_class_report_and_one_vs_rest_by_hand():
  labels = np.array([0, 0, 1, 1, 2, 2])
  preds = np.array([0, 1, 1, 1, 2, 0])
  probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
  report = metrics.per_class_report(labels, probs, preds, ["a", "b", "c"])
  assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
  a, b = report["per_class"]["a"], report["per_class"]["b"]
  assert (a["precision"], a["recall"], a["specificity"], a["support"]) == (0.5, 0.5, 0.75, 2)
  assert (b["precision"], b["recall"], b["specificity"]) == (2 / 3, 1.0, 0.75)
  assert report["macro"]["recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
  assert report["weighted"]["recall"] == pytest.approx(metrics.classification_metrics(labels, probs, preds)["accuracy"])
  view = metrics.one_vs_rest(labels, probs, preds, positive=2)
  assert (view["sensitivity"], view["specificity"]) == (0.5, 1.0)


def test_misclassification_auroc():
  assert metrics.misclassification_auroc([True, True, False], [0.9, 0.8, 0.1]) == 1.0
  assert metrics.misclassification_auroc([True, False], [0.1, 0.9]) == 0.0
  assert math.isnan(metrics.misclassification_auroc([True, True], [0.1, 0.9]))


def test_labelled_plots(tmp_path):
  """Points labelled with the setting that made them (early_stop.png's delta), image grids with row labels
  (samples.png's classes)."""
  curves = {"rule": ([10, 20], [0.8, 0.9]), "other": ([5, 40], [0.7, 0.95])}
  plots.save_xy_plot_png(
    tmp_path / "xy.png", curves, "cost", "accuracy", "t", point_labels={"rule": ["δ=0.1", "δ=0.01"]}
  )
  grid = np.zeros((2 * 40, 120, 1), np.uint8)
  plots.save_labelled_grid_png(tmp_path / "grid.png", grid, ["normal", "pneumonia"])
  for name in ("xy.png", "grid.png"):
    with Image.open(tmp_path / name) as image:
      image.verify()
  assert Image.open(tmp_path / "grid.png").size[0] > 120  # the labels widen it


def test_confusion_matrix_png(tmp_path):
  plots.save_confusion_matrix_png(tmp_path / "cm.png", [[5, 1, 0], [2, 3, 0], [0, 0, 0]], ["a", "b", "c"], "val")
  assert Image.open(tmp_path / "cm.png").size[0] > 400
