"""Tests of the ResNet baseline: architecture size, its loss and augmentation, and the real training loop."""

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import pneumoniamnist_resnet
from medfusion import baseline_trainer, configcheck
from medfusion.models.resnet import ResNet, ResNetConfig


def _num_params(config: ResNetConfig, channels: int) -> int:
  shape = (1, config.image_size, config.image_size, channels)
  variables = jax.eval_shape(lambda: ResNet(config).init(jax.random.key(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_resnet18_parameter_counts():
  # CIFAR ResNet-18 (3x3 stem, no max-pool) and torchvision's ImageNet ResNet-18 (7x7/2 stem + max-pool).
  assert _num_params(ResNetConfig(num_classes=10, image_size=32), channels=3) == 11_173_962
  assert _num_params(ResNetConfig(num_classes=1000, image_size=224), channels=3) == 11_689_512


def test_cross_entropy_matches_optax_label_smoothing():
  logits = jax.random.normal(jax.random.key(0), (5, 3))
  labels = jnp.array([0, 1, 2, 1, 0])
  targets = optax.smooth_labels(jax.nn.one_hot(labels, 3), 0.1)
  expected = optax.softmax_cross_entropy(logits, targets)
  np.testing.assert_allclose(baseline_trainer.cross_entropy(logits, labels, 0.1), expected, rtol=1e-6)


def test_augment_translates_within_padding():
  images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1), minval=-1.0, maxval=1.0)
  np.testing.assert_array_equal(baseline_trainer.augment(images, jax.random.key(1), 0, False), images)
  out = np.asarray(baseline_trainer.augment(images, jax.random.key(1), 2, False))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  for image, crop in zip(padded, out, strict=True):
    assert any(np.array_equal(image[y : y + 8, x : x + 8], crop) for y in range(5) for x in range(5))


def test_bad_baseline_field_is_rejected():
  config = pneumoniamnist_resnet.get_config("smoke")
  config.eval.best_metric = "val/acc"
  with pytest.raises(configcheck.ConfigError, match="best_metric"):
    baseline_trainer.check_baseline(config)


def _records(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_smoke_config_trains_scores_and_resumes(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="medfusion")
  config = pneumoniamnist_resnet.get_config("smoke")
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  config.train.progress_bar = False
  workdir = tmp_path / "run"
  baseline_trainer.train_and_evaluate(config, str(workdir))

  losses = [r["loss"] for r in _records(workdir) if "loss" in r]
  assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
  result = json.loads((workdir / "metrics_val.json").read_text())
  for key in ("accuracy", "auc", "f1", "specificity", "ece", "aurc", "loss", "n", "seconds_per_image"):
    assert key in result
  assert result["n"] == 524 and result["seconds_per_image"] > 0
  assert result["loss"] < math.log(2.0)  # below a uniform guess on the whole val split after 10 steps

  config.train.steps = 12
  baseline_trainer.train_and_evaluate(config, str(workdir))
  assert "Resumed from step 10" in caplog.text
  train_steps = [r["step"] for r in _records(workdir) if "loss" in r]
  assert train_steps == [2, 4, 6, 8, 10, 12]
