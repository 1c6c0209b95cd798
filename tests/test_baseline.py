"""Tests of the ResNet baseline: architecture size, its loss and augmentation, and the real training loop."""

import json
import logging
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import pneumoniamnist_resnet
from medfusion import checkpoint, configcheck, modeldir, sharding
from medfusion.data import pipeline
from medfusion.evaluation import evaluators, predictors, split_scoring
from medfusion.models.resnet import ResNet, ResNetConfig
from medfusion.training import resnet_trainer


def _num_params(config: ResNetConfig, channels: int) -> int:
  shape = (1, config.image_size, config.image_size, channels)
  variables = jax.eval_shape(lambda: ResNet(config).init(jax.random.key(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_resnet18_parameter_counts():
  # CIFAR ResNet-18 (3x3 stem, no max-pool) and torchvision's ImageNet ResNet-18 (7x7/2 stem + max-pool).
  assert _num_params(ResNetConfig(num_classes=10, image_size=32), channels=3) == 11_173_962
  assert _num_params(ResNetConfig(num_classes=1000, image_size=224), channels=3) == 11_689_512


def test_cross_entropy_matches_optax_label_smoothing():
  logits = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 1, 0])
  targets = optax.smooth_labels(jax.nn.one_hot(labels, 3), 0.1)
  expected = optax.softmax_cross_entropy(logits, targets)
  np.testing.assert_allclose(resnet_trainer.cross_entropy(logits, labels, 0.1), expected, rtol=1e-6)


def test_augment_translates_within_padding():
  images = np.random.default_rng(0).uniform(-1.0, 1.0, (6, 8, 8, 1)).astype(np.float32)
  np.testing.assert_array_equal(resnet_trainer.augment(images, jax.random.key(1), 0), images)
  out = np.asarray(resnet_trainer.augment(images, jax.random.key(1), 2))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  for image, crop in zip(padded, out, strict=True):
    assert any(np.array_equal(image[y : y + 8, x : x + 8], crop) for y in range(5) for x in range(5))
  assert not np.array_equal(out, images)


@pytest.mark.parametrize("name", resnet_trainer.OPTIMIZERS)
def test_each_optimizer_builds_a_state(name):
  config = pneumoniamnist_resnet.get_config("smoke")
  config.optim.name = name
  model = ResNet(ResNetConfig.from_config(config))
  state = jax.eval_shape(lambda: resnet_trainer.init_state(config, model, resnet_trainer.make_optimizer(config)))
  assert state.batch_stats and jax.tree.leaves(state.opt_state)


def test_bad_baseline_field_is_rejected():
  config = pneumoniamnist_resnet.get_config("smoke")
  config.train.best_metric = "val/acc"
  with pytest.raises(configcheck.ConfigError, match="best_metric"):
    configcheck.check(config)


def _records(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_smoke_config_trains_scores_and_resumes(tmp_path, tfds_dir, caplog):
  caplog.set_level(logging.INFO, logger="medfusion")
  config = pneumoniamnist_resnet.get_config("smoke")
  config.data.tfds_data_dir = tfds_dir
  config.train.progress_bar = False
  workdir = tmp_path / "run"
  resnet_trainer.train_and_evaluate(config, str(workdir))

  losses = [r["loss"] for r in _records(workdir) if "loss" in r]
  assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
  result = json.loads((workdir / "metrics_val.json").read_text())
  for key in ("accuracy", "auc", "f1", "specificity", "ece", "aurc", "loss", "n", "seconds_per_image"):
    assert key in result
  assert result["n"] == 524 and result["seconds_per_image"] > 0
  # After 10 steps BatchNorm's running statistics are still far off, so the val loss itself says little.
  assert math.isfinite(result["loss"]) and 0.0 <= result["accuracy"] <= 1.0
  labels, probs = resnet_trainer.evaluate_split(config, str(workdir), "val")
  assert evaluators.classification_report(labels, probs)["accuracy"] == result["accuracy"]
  # The evaluator chose the checkpoint on val half A (`half`: what it logged is the best checkpoint's figures on
  # the first `num_examples` images of half A), and the halves' figures add up to the whole split's.
  logged = next(r for r in _records(workdir) if r["step"] == result["step"] and "val/auc" in r)
  a, b = pipeline.half_split(labels)
  first = {half: rows[: config.evals.classify.num_examples] for half, rows in (("A", a), ("B", b))}
  on = {half: evaluators.classification_report(labels[rows], probs[rows]) for half, rows in first.items()}
  assert logged["val/auc"] == pytest.approx(on["A"]["auc"], rel=1e-6) != on["B"]["auc"]
  halves = len(a) * result["halves"]["A"]["accuracy"] + len(b) * result["halves"]["B"]["accuracy"]
  assert halves == pytest.approx(len(labels) * result["accuracy"])
  stored = np.load(workdir / "predictions_val.npz")
  np.testing.assert_array_equal(stored["labels"], labels)
  np.testing.assert_allclose(stored["probs"], probs, rtol=1e-6)
  _check_reading_scoring_and_export(config, workdir, result, tmp_path)

  # A run killed after step 9 left checkpoint 5 as its newest: a relaunch continues from it on the same data.
  first = {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r}
  shutil.rmtree(workdir / "checkpoints" / "10")
  resnet_trainer.train_and_evaluate(config, str(workdir))
  assert "Resumed from step 5" in caplog.text
  # metrics.jsonl drops the killed run's lines after step 5, so each step is logged once.
  resumed = [(r["step"], r["loss"]) for r in _records(workdir) if "loss" in r]
  assert [step for step, _ in resumed] == [2, 4, 6, 8, 10]
  np.testing.assert_allclose([loss for _, loss in resumed[2:]], [first[6], first[8], first[10]], rtol=1e-5)


def _check_reading_scoring_and_export(config, workdir, val_metrics: dict, tmp_path):
  """A ResNet workdir is read without its optimizer state (the same variables as the whole train state's), scored
  by medfusion.score's path into the same files as a diffusion model (only the softmax row; calibration stored
  like the diffusion model's), scored in memory alike, and exported without optimizer state."""
  loaded = modeldir.load(config, str(workdir))
  model, optimizer = ResNet(ResNetConfig.from_config(config)), resnet_trainer.make_optimizer(config)
  abstract = resnet_trainer.abstract_state(config, model, optimizer, sharding.replicated(sharding.make_mesh()))
  state, step, _ = checkpoint.restore_for_inference(str(workdir), abstract)
  assert loaded.step == int(step) and set(loaded.params) == {"params", "batch_stats"}
  for a, b in zip(jax.tree.leaves(resnet_trainer.variables(state)), jax.tree.leaves(loaded.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  out = tmp_path / "scores"
  result = split_scoring.score_split(config, str(workdir), "val", str(out))
  assert set(result) >= {"n", "softmax", "temperature", "temperature_source", "checkpoint_step"}
  assert "vote" not in result and "mean" not in result and "nfe_per_image" not in result
  assert result["n"] == val_metrics["n"] and result["softmax"]["accuracy"] == val_metrics["accuracy"]
  for half in ("A", "B"):
    assert result["halves"][half]["softmax"]["accuracy"] == val_metrics["halves"][half]["accuracy"]
  header = (out / "scores.csv").read_text().splitlines()[0].split(",")
  assert header == ["index", "label", "prediction", "prob_normal", "prob_pneumonia", "entropy"]
  assert sorted(os.listdir(out)) == ["metrics.json", "risk_coverage.png", "scores.csv"]
  key = modeldir.calibration_key(config, loaded.step)
  stored = modeldir.stored_temperature(str(workdir), key)
  assert (stored == result["temperature"]) == (result["temperature_source"] == "fitted on val now")

  split = pipeline.load_split(config.data, "val")
  totals, in_memory = predictors.score_in_memory(config, loaded, split, result["temperature"])
  assert in_memory["n"] == result["n"] and in_memory["softmax"]["accuracy"] == result["softmax"]["accuracy"]
  np.testing.assert_allclose(in_memory["softmax"]["auc"], result["softmax"]["auc"], rtol=1e-6)
  assert totals.probs.shape == (result["n"], 2)

  exported = tmp_path / "exported"
  assert modeldir.export(config, str(workdir), str(exported)) == loaded.step
  assert "opt_state" not in os.listdir(exported / "params")
  shipped = modeldir.load(config, str(exported))
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(shipped.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
