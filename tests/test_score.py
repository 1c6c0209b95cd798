"""Batch scoring end to end on a tiny model trained on synthetic lesions."""

import csv
import json
import os

import kernel_errors_script
import numpy as np
import pytest
from conftest import LESION_STEPS, StartedPythons, run_python

from medfusion import modeldir
from medfusion.evaluation import split_scoring


@pytest.fixture(scope="module")
def scored(lesion_model, tmp_path_factory):
  config, workdir = lesion_model
  output = str(tmp_path_factory.mktemp("scores"))
  return config, workdir, output, split_scoring.score_split(config, workdir, "val", output)


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_tiny_model_classifies_synthetic_lesions_above_chance(scored):
  *_, result = scored
  assert result["n"] == 64
  assert result["vote"]["accuracy"] >= 0.75
  assert result["mean"]["accuracy"] >= 0.7
  assert result["vote"]["auc"] >= 0.8


def test_outputs(scored):
  config, workdir, output, result = scored
  rows = read_csv(os.path.join(output, "scores.csv"))
  assert [int(r["index"]) for r in rows] == list(range(64))
  assert set(rows[0]) >= {"label", "prediction", "votes_lesion", "mean_error_healthy", "prob_lesion", "vote_share"}
  k, c = config.classify.num_draws, config.data.num_classes
  assert all(int(r["nfe"]) == k * c for r in rows)
  assert all(int(r["votes_healthy"]) + int(r["votes_lesion"]) == k for r in rows)
  with open(os.path.join(output, "metrics.json")) as f:
    metrics = json.load(f, parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}: not strict JSON"))
  for name in ("vote", "mean"):
    assert set(metrics[name]) >= {
      "accuracy",
      "balanced_accuracy",
      "auc",
      "f1",
      "precision",
      "recall",
      "specificity",
      "ece",
      "aurc",
      "accuracy_at_50_coverage",
      "accuracy_at_90_coverage",
    }
  assert metrics["nfe_per_image"] == k * c
  assert os.path.getsize(os.path.join(output, "risk_coverage.png")) > 1000
  assert os.path.exists(os.path.join(workdir, modeldir.CALIBRATION_FILE))
  assert not any(name.startswith("scores.partial") for name in os.listdir(output))


def test_interrupted_scoring_resumes_without_duplicates(scored, tmp_path, monkeypatch):
  config, workdir, output, _ = scored
  config = config.copy_and_resolve_references()
  config.classify.batch_size = 4  # blocks of 4 images first, then up to 16 (split_scoring.BlockSizes)
  resumed_dir = str(tmp_path / "resumed")
  append = split_scoring.PartialScores.append
  calls = []

  def crash_after_two_blocks(self, totals):
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(len(totals.index))
    append(self, totals)

  monkeypatch.setattr(split_scoring.PartialScores, "append", crash_after_two_blocks)
  with pytest.raises(KeyboardInterrupt):
    split_scoring.score_split(config, workdir, "val", resumed_dir)
  assert len(read_csv(os.path.join(resumed_dir, "scores.partial.csv"))) == sum(calls) >= 8
  monkeypatch.setattr(split_scoring.PartialScores, "append", append)
  split_scoring.score_split(config, workdir, "val", resumed_dir)
  # Each image once, with the uninterrupted run's scores (which used another batch size: scores depend on it only
  # through float rounding; test_robustness checks bit-identical resumes with the same arguments).
  resumed, reference = read_csv(os.path.join(resumed_dir, "scores.csv")), read_csv(os.path.join(output, "scores.csv"))
  assert [r["index"] for r in resumed] == [r["index"] for r in reference]
  for a, b in zip(resumed, reference, strict=True):
    assert [a[k] for k in a if k.startswith(("votes_", "prediction"))] == [
      b[k] for k in b if k.startswith(("votes_", "prediction"))
    ]
    np.testing.assert_allclose(float(a["mean_error_lesion"]), float(b["mean_error_lesion"]), rtol=1e-5)


def test_errors_same_on_one_and_eight_devices():
  eight_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  with StartedPythons([["tests/kernel_errors_script.py"]], eight_devices) as started:
    one = kernel_errors_script.errors()  # while the other process starts
    (eight,) = started.results()
  eight = json.loads(eight.stdout.splitlines()[-1])
  assert (one["devices"], eight["devices"]) == (1, 8)
  np.testing.assert_allclose(eight["mean_errors"], one["mean_errors"], rtol=1e-5)
  assert eight["votes"] == one["votes"]


def test_sweep_reuses_the_scoring_draws(scored, tmp_path):
  from medfusion.evaluation import draw_analysis

  config, workdir, output, result = scored
  sweep = draw_analysis.sweep_split(config, workdir, "val", str(tmp_path))
  rows = read_csv(os.path.join(output, "scores.csv"))
  errors = np.load(tmp_path / "errors.npz")["errors"]
  assert errors.shape == (64, 2, config.classify.num_draws)
  for c, name in enumerate(config.data.class_names):
    np.testing.assert_allclose(errors[:, c].mean(axis=1), [float(r[f"mean_error_{name}"]) for r in rows], rtol=1e-5)
    votes = (np.argmin(errors, axis=1) == c).sum(axis=1)
    np.testing.assert_array_equal(votes, [int(r[f"votes_{name}"]) for r in rows])
  k = config.classify.num_draws
  assert sweep["k_sweep"]["k"][-1] == k
  assert sweep["k_sweep"]["vote"][-1] == pytest.approx(result["vote"]["accuracy"])
  assert sweep["k_sweep"]["mean"][-1] == pytest.approx(result["mean"]["accuracy"])
  assert sum(sweep["t_profile"]["draws"]) == 64 * k
  with open(tmp_path / "sweep.json") as f:  # strict JSON: no bare NaN for empty t bins
    json.load(f, parse_constant=lambda name: pytest.fail(f"sweep.json holds {name}"))
  assert all(os.path.getsize(tmp_path / f) > 1000 for f in ("k_sweep.png", "t_profile.png"))


def test_export_ships_the_best_ema_parameters(scored, tmp_path):
  """medfusion.export writes params only; the folder then serves as a workdir with the same parameters."""
  import jax

  config, workdir, _, _ = scored
  step = modeldir.export(config, workdir, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["calibration.json", "config.json", "export.json", "manifest.json", "params"]
  original, shipped = modeldir.load_ema_params(config, workdir), modeldir.load_ema_params(config, str(tmp_path))
  assert step == original.step == shipped.step
  for a, b in zip(jax.tree.leaves(original.params), jax.tree.leaves(shipped.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  key = modeldir.calibration_key(config, step)
  assert modeldir.stored_temperature(str(tmp_path), key) == modeldir.stored_temperature(workdir, key) is not None


def test_classifier_evaluator_reports_what_scoring_reports(scored):
  """The evaluator run during training goes through the same driver, kernel and aggregators as medfusion.score."""
  from medfusion import sharding
  from medfusion.data import pipeline
  from medfusion.evaluation import evaluators

  config, workdir, _, result = scored
  settings = evaluators.Settings("c", "diffusion_classifier", 1, "val/", 64, num_draws=config.classify.num_draws)
  split = pipeline.load_split(config.data, "val")
  evaluator = evaluators.DiffusionClassifierEvaluator(config, settings, split, sharding.make_mesh())
  evaluator.settings = settings
  logged = evaluators.run(evaluator, modeldir.load_ema_params(config, workdir).params)
  for aggregator in ("vote", "mean"):
    for metric in ("accuracy", "balanced_accuracy", "f1"):
      assert logged[f"val/{aggregator}_{metric}"] == result[aggregator][metric]
  assert logged["val/mean_auc"] == pytest.approx(result["mean"]["auc"])  # binary AUC: any temperature


def test_score_without_config_uses_the_models_own(scored, tmp_path, tfds_dir):
  """The lesion model was trained with overrides (8 channels, no attention, LESION_STEPS steps); scoring it needs only
  --workdir."""
  config, workdir, output, _ = scored
  proc = run_python(
    [
      "-m",
      "medfusion.score",
      f"--workdir={workdir}",
      "--split=val",
      f"--output={tmp_path}",
      "--max_examples=8",
      f"--config.data.tfds_data_dir={tfds_dir}",
    ]
  )
  assert "Using checkpoint" in proc.stderr and f"(step {LESION_STEPS}, best)" in proc.stderr
  assert split_scoring.TIMING_LOG in proc.stderr  # where the time went
  assert "oneDNN" not in proc.stderr and "InitializeLog" not in proc.stderr  # TensorFlow's start-up notices
  first = read_csv(os.path.join(output, "scores.csv"))[:8]
  again = read_csv(os.path.join(tmp_path, "scores.csv"))
  assert [r["votes_lesion"] for r in again] == [r["votes_lesion"] for r in first]
  with open(tmp_path / "metrics.json") as f:
    assert json.load(f)["checkpoint"] == "best"


def test_early_stop_replay_matches_the_adaptive_classifier(scored):
  """draw_analysis replays sequential stopping on the stored draws; the classifier doing it live agrees exactly."""
  from medfusion.classify import aggregate
  from medfusion.classify.classifier import DiffusionClassifier
  from medfusion.data import pipeline
  from medfusion.evaluation import draw_analysis

  config, workdir, _, _ = scored
  config = config.copy_and_resolve_references()
  config.classify.update(num_draws=16, draws_per_round=2, adaptive="sequential", delta=0.1)
  split = pipeline.load_split(config.data, "val")
  images, indices = split.images[:64].astype(np.float32) / 127.5 - 1.0, np.arange(64)
  classifier = DiffusionClassifier(config, modeldir.load_ema_params(config, workdir).params)
  live = classifier.score(images, indices)
  errors = classifier.draw_errors(images, indices)
  replay = draw_analysis.early_stop_sweep(errors, split.labels[:64], [0.1], 2)
  assert live.draws.mean() == replay["exact"]["mean_draws"][0] < 16  # some images stopped early
  vote = aggregate.vote_prediction(live.votes, live.mean_errors)
  assert np.mean(vote == split.labels[:64]) == replay["exact"]["accuracy"][0]


def test_in_memory_scoring_matches_batch_scoring(scored):
  """predictors.score_in_memory (e.g. corrupted copies of a split) runs the path medfusion.score runs."""
  from medfusion.data import pipeline
  from medfusion.evaluation import predictors, report

  config, workdir, _, result = scored
  split = pipeline.load_split(config.data, "val")
  totals, in_memory = predictors.score_in_memory(
    config, modeldir.load_ema_params(config, workdir), split, result["temperature"]
  )
  assert in_memory["n"] == result["n"] == len(totals.label)
  for aggregator in ("vote", "mean"):
    for metric in ("accuracy", "auc", "ece", "aurc"):
      np.testing.assert_allclose(in_memory[aggregator][metric], result[aggregator][metric], rtol=1e-9)
  # The whole split was scored, so metrics.json also reports each half (the one that chose, the one that reports).
  for half, indices in zip("AB", pipeline.half_split(split.labels), strict=True):
    rows = np.isin(totals.index, indices)
    columns = report.per_image(report.subset(totals, rows), result["temperature"])
    assert result["halves"][half]["n"] == len(indices)
    assert result["halves"][half]["vote"]["accuracy"] == np.mean(columns["prediction"] == totals.label[rows])


def test_scoring_blocks_and_batches_fit_the_work():
  """Blocks last about BLOCK_SECONDS in whole batches (one to four); a split smaller than a batch is not padded
  beyond what the devices need."""
  assert split_scoring.block_size(64, images_per_second=0.5, seconds=60) == 64  # slow: one batch
  assert split_scoring.block_size(64, images_per_second=2.2, seconds=60) == 128
  assert split_scoring.block_size(64, images_per_second=100.0, seconds=60) == 256  # fast: at most four
  assert split_scoring.scoring_batch_size(64, n=8, devices=1) == 8
  assert split_scoring.scoring_batch_size(64, n=9, devices=8) == 16
  assert split_scoring.scoring_batch_size(64, n=500, devices=1) == 64
  assert split_scoring._interrupted_message(0, 0, 64, "P").startswith("stopped before the first block")
  assert split_scoring._interrupted_message(20, 4, 64, "P") == (
    "20 of 64 images are kept (16 of them in this run) in P; run the same command again to score the other 44"
  )


def test_score_reports_a_stored_timestep_weighting_as_a_third_row(scored, tmp_path):
  """With config.classify.weighting, medfusion.score evaluates every class on every draw and adds the stored
  weighting's decision as the `weighted` row (scores.csv: prediction_weighted, prob_weighted_*); the vote and mean
  rows stay the plain run's. With none stored, it says how to fit one; a resumed run keeps the weighted scores."""
  from medfusion.classify import weighting
  from medfusion.classify.classifier import DiffusionClassifier
  from medfusion.data import pipeline
  from medfusion.errors import UserError
  from medfusion.evaluation import predictors, report, split_runner

  config, workdir, _, plain = scored
  model_dir = str(tmp_path / "model")
  modeldir.export(config, workdir, model_dir)
  config = config.copy_and_resolve_references()
  config.classify.weighting = "label_free"
  with pytest.raises(UserError, match=r"none is stored in .* python -m medfusion.sweep .* --store_weighting"):
    split_scoring.score_split(config, model_dir, "val", str(tmp_path / "unfitted"))

  loaded = modeldir.load(config, model_dir)
  split = pipeline.load_split(config.data, "val")
  errors, t = split_runner.draw_errors(DiffusionClassifier(config, loaded.params), split, len(split.labels))
  fitted = weighting.fit(errors, t, split.labels, "label_free", 10, config.classify.t_min, config.classify.t_max)
  key = modeldir.weighting_key(config, loaded.step)
  modeldir.store_weighting(model_dir, key, fitted.to_json(), "val", len(split.labels))

  out = tmp_path / "weighted"
  result = split_scoring.score_split(config, model_dir, "val", str(out))
  expected = np.argmax(fitted.logits(errors, t), axis=1)
  rows = read_csv(out / "scores.csv")
  assert [int(r["prediction_weighted"]) for r in rows] == expected.tolist()
  assert result["weighted"]["accuracy"] == np.mean(expected == split.labels)
  assert set(result["halves"]["A"]) >= {"vote", "mean", "weighted"}
  for row in ("vote", "mean"):
    np.testing.assert_allclose(result[row]["accuracy"], plain[row]["accuracy"])
    np.testing.assert_allclose(result[row]["auc"], plain[row]["auc"], rtol=1e-6)

  # What an interrupted run keeps per image (the partial CSV's rows) gives back the weighted scores.
  predictor = predictors.make(config, loaded, workdir=model_dir)
  totals = predictors.totals_from_errors(errors, np.arange(len(split.labels)), split.labels)
  weighted = report.WeightedTotals(**vars(totals), weighted_logits=fitted.logits(errors, t))
  rows = np.array([[str(v) for v in row] for row in predictor.partial_rows(weighted)])
  assert len(predictor.partial_header(config.data.class_names)) == rows.shape[1]
  again = predictor.from_partial_rows(rows, config.data.num_classes)
  for field in ("index", "votes", "mean_error", "weighted_logits", "nfe"):
    np.testing.assert_array_equal(getattr(again, field), getattr(weighted, field))
