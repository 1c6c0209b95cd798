"""The real training loop on the smoke config: loss goes down, checkpoints round-trip, resume, 8 devices."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
import train_losses_script
from conftest import StartedPythons

from medfusion import checkpoint, sharding
from medfusion.training import diffusion_trainer, loop
from medfusion.training import state as state_lib


def smoke_config(tfds_dir, eval_every, **train):
  """train_losses_script.tiny_config (a narrow UNet: compiles fast) with these train fields, both evaluators
  every `eval_every` steps."""
  config = train_losses_script.tiny_config(tfds_dir)
  config.train.progress_bar = False
  config.train.update(train)
  for evaluator in config.evals.values():
    evaluator.every = eval_every
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
  """40 smoke steps at a high learning rate, logging every step, saving at the evaluations (steps 20 and 40)."""
  workdir = str(tmp_path_factory.mktemp("smoke"))
  config = smoke_config(tfds_dir, steps=40, log_every=1, learning_rate=2e-3, eval_every=20, checkpoint_every=20)
  state = diffusion_trainer.train_and_evaluate(config, workdir)
  return config, workdir, state


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_loss_goes_down(trained):
  _, workdir, state = trained
  rows = read_metrics(workdir)
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 40 and int(state.step) == 40
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
  val = [r["val/loss"] for r in rows if "val/loss" in r]
  assert len(val) == 2 and all(np.isfinite(val))
  # The classifier evaluator logs beside the loss, and best/ holds the step with the best config.train.best_metric.
  auc = {r["step"]: r["val/mean_auc"] for r in rows if "val/mean_auc" in r}
  assert sorted(auc) == [20, 40] and all(0.0 <= v <= 1.0 for v in auc.values())
  assert {"val/vote_accuracy", "val/mean_accuracy", "val/vote_auc"} <= set().union(*rows)
  (best,) = os.listdir(os.path.join(workdir, "best"))
  assert auc[int(best)] == max(auc.values())
  summary = loop.finished_summary(workdir, "val/mean_auc", "val", diffusion=True)  # what medfusion.train prints
  assert f"best checkpoint: {workdir}/best/{best} (step {best}, val/mean_auc = {auc[int(best)]:.4g})" in summary
  assert f"python -m medfusion.score --workdir={workdir} --split=val" in summary
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert any(name.startswith("events") for name in os.listdir(os.path.join(workdir, "tensorboard")))


def test_checkpoint_round_trip_restores_equal_arrays(trained):
  config, workdir, state = trained
  model, optimizer = state_lib.make_model(config), state_lib.make_optimizer(config.train)
  abstract = state_lib.abstract_state(config, model, optimizer, sharding.replicated(sharding.make_mesh()))
  ckpts = checkpoint.Checkpoints(workdir)
  assert ckpts.latest_step() == 40
  restored, meta = ckpts.restore_latest(abstract)
  ckpts.close()
  assert meta["data"]["examples_seen"] == 40 * config.train.batch_size
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert sorted(os.listdir(os.path.join(workdir, "best"))) != []


def test_resume_continues_at_the_right_step(trained, tmp_path, caplog):
  """The trained run with its last checkpoint gone resumes at step 20 (the same config: its train step compiled
  once) and ends where the uninterrupted run ended."""
  config, workdir, state = trained
  resumed = tmp_path / "run"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / "checkpoints" / "40")
  with caplog.at_level(logging.INFO, logger="medfusion"):
    again = diffusion_trainer.train_and_evaluate(config, str(resumed))
  assert "Resumed from step 20" in caplog.text
  assert int(again.step) == 40
  steps = [r["step"] for r in read_metrics(resumed) if "loss" in r]
  assert steps == list(range(1, 41))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(again.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eight_simulated_devices_give_the_same_losses(tfds_dir, tiny_arrays):
  del tiny_arrays  # it builds the data in tfds_dir: the two processes below only read it
  eight_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  # 3 steps: the train step of test_checkpoints_are_also_time_based's run, compiled once
  with StartedPythons([["tests/train_losses_script.py", tfds_dir, "3"]], eight_devices) as started:
    one = train_losses_script.losses(tfds_dir, 3)  # while the other process starts
    (eight,) = started.results()
  eight = json.loads(eight.stdout.splitlines()[-1])
  assert (jax.device_count(), eight["devices"]) == (1, 8)
  np.testing.assert_allclose(eight["losses"], one, rtol=1e-4)


def test_checkpoints_are_also_time_based(tfds_dir, tmp_path):
  """With checkpoint_minutes tiny, every step is saved although checkpoint_every is far off."""
  config = smoke_config(tfds_dir, 100, steps=3, checkpoint_every=100, checkpoint_minutes=1e-9, keep_checkpoints=5)
  diffusion_trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2", "3"]


def test_classification_term_every_second_step_with_focused_timesteps(tfds_dir, tiny_arrays):
  """The classification term (here every second step) is logged beside the denoising loss: a finite cross-entropy
  near log(2) for an untrained two-class model on its steps, 0 on the others; half the timesteps in the range."""
  del tiny_arrays
  config = train_losses_script.tiny_config(tfds_dir)
  config.train.steps = 3
  config.diffusion.update(t_focus=0.5, class_loss_weight=0.5, class_loss_every=2)
  config.classify.update(t_min=0.1, t_max=0.9)
  rows = train_losses_script.step_metrics(config, 3)
  assert [r["class_loss"] > 0 for r in rows] == [True, False, True]
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["class_loss"]) for r in rows)
  assert abs(rows[0]["class_loss"] - np.log(2)) < 0.5
