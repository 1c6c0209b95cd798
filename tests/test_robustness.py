"""Failure behaviour: one-line errors for bad input, help, the shipped model in both dtypes, and finite errors at
the extremes of the schedule (interruptions: test_interrupts.py)."""

import os

import fakes
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LESION_MODEL_FLAGS, ROOT, run_pythons

from medfusion import modeldir
from medfusion.classify import kernel
from medfusion.data import pipeline
from medfusion.diffusion import schedules


def test_cli_rejects_bad_configs_in_one_line_naming_the_culprit(tmp_path):
  """One process per way a config reaches the command line: a missing file, an unknown field (with a suggestion),
  a value the typed specs refuse, and comma-separated names; each field's own check is tested in-process
  (test_configs.py)."""
  train = ["-m", "medfusion.train", f"--workdir={tmp_path}"]
  smoke = [*train, "--config=configs/pneumoniamnist.py:smoke"]
  nope, stepz, steps, names = run_pythons(
    [
      [*train, "--config=configs/nope.py"],
      [*smoke, "--config.train.stepz=3"],
      [*smoke, "--config.train.steps=-5"],
      [*smoke, "--config.data.class_names=a,b,c", "--config.train.steps=0"],
    ],
    check=False,
  )
  fakes.assert_one_line_error(nope, "no such config file: configs/nope.py")
  fakes.assert_one_line_error(stepz, "'stepz'", 'Did you mean "steps"')
  assert "\\" not in stepz.stderr
  fakes.assert_one_line_error(steps, "config.train.steps=-5")
  fakes.assert_one_line_error(names, "config.train.steps=0")  # three comma-separated names passed the class check
  assert not os.listdir(tmp_path)  # nothing written before the config is known to be good


def test_model_commands_check_counts_workdir_and_output_before_loading_anything(tmp_path):
  """Negative counts, a missing workdir, a broken config.json and an --output that cannot be written are each one
  line, found before any data or model is loaded."""
  model = os.path.join(ROOT, "pretrained", "pneumoniamnist")
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text('{\n  "seed": 0,\n  "data": {"npz": "x",}\n}\n')
  a_file = tmp_path / "file.txt"
  a_file.write_text("not a folder")
  score = ["-m", "medfusion.score", "--split=val"]
  cases = {
    "-5 is not a non-negative integer": [*score, f"--workdir={model}", "--max_examples=-5", f"--output={tmp_path}/o"],
    "--num=0: 0 is not a positive integer": ["-m", "medfusion.sample", f"--workdir={model}", "--num=0", "--output=o"],
    "nowhere: no such folder": [*score, f"--workdir={tmp_path}/nowhere", f"--output={tmp_path}/o"],
    "config.json is not valid JSON: line 3, column": [*score, f"--workdir={broken}", f"--output={tmp_path}/o"],
    "file.txt is a file, not a folder": [*score, f"--workdir={model}", f"--output={a_file}"],
    "file.txt is a file, so the folder cannot be created": [*score, f"--workdir={model}", f"--output={a_file}/out"],
  }
  if os.geteuid() != 0:  # root writes into read-only folders
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    cases["read_only is not writable"] = [*score, f"--workdir={model}", f"--output={read_only}"]
  for message, proc in zip(cases, run_pythons(list(cases.values()), check=False), strict=True):
    fakes.assert_one_line_error(proc, message)
    assert "Using checkpoint" not in proc.stderr


def test_cli_rejects_bad_data_and_checkpoints_in_one_line(tmp_path, tfds_dir, lesion_model, lesion_arrays):
  bad = tmp_path / "bad.npz"
  np.savez(bad, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.zeros((3, 1), np.uint8))
  score = ["-m", "medfusion.score", "--config=configs/synthetic_lesions.py:smoke", f"--output={tmp_path}/out"]
  arrays = ["--config.data.source=arrays", f"--config.data.folder={lesion_arrays}"]  # no TensorFlow to start
  workdir = f"--workdir={lesion_model[1]}"
  npz, no_checkpoint, shapes, draws = run_pythons(
    [
      [
        "-m",
        "medfusion.train",
        "--config=configs/pneumoniamnist.py:smoke",
        f"--workdir={tmp_path}/w",
        f"--config.data.npz={bad}",
        f"--config.data.tfds_data_dir={tfds_dir}",
      ],
      [*score, *LESION_MODEL_FLAGS, f"--workdir={tmp_path}", *arrays],
      [*score, "--config.model.attention_resolutions=()", workdir, *arrays],  # the smoke width, not the model's
      [*score, *LESION_MODEL_FLAGS, workdir, *arrays, "--config.classify.num_draws=0"],
    ],
    check=False,
  )
  fakes.assert_one_line_error(npz, "bad.npz", "train_labels")
  fakes.assert_one_line_error(no_checkpoint, "has no checkpoint")
  fakes.assert_one_line_error(shapes, "has shape", "expects")
  fakes.assert_one_line_error(draws, "classify.num_draws=0")
  assert not os.path.exists(f"{tmp_path}/out/scores.csv")


@pytest.mark.parametrize("t", [0.0, 1e-7, 1.0 - 1e-7, 1.0])
@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_errors_are_finite_at_the_extremes_of_the_schedule(t, prediction):
  schedule = schedules.Schedule("cosine", -15.0, 15.0)
  key = jax.random.key(0)
  x = jax.random.uniform(key, (2, 8, 8, 1), minval=-1, maxval=1)
  eps = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
  logsnr = schedule.logsnr(jnp.full((2,), t))
  z = schedules.diffuse(x, eps, logsnr)
  output = jax.random.normal(jax.random.fold_in(key, 2), x.shape)  # any finite network output
  for error in kernel.ERRORS:
    assert np.all(np.isfinite(kernel.pair_error(error, output, x, eps, z, logsnr, prediction))), error


def test_shipped_model_scores_alike_in_bfloat16_and_float32(tfds_dir):
  """pretrained/pneumoniamnist on the first 128 images of the bundled validation split (two classifier batches):
  bf16 and fp32 predictions agree on >= 99 % of them (all but one) for both aggregators (K = 2 draws and 128 of the
  524 images keep this test short; the shipped config uses 64 draws)."""
  from configs import pneumoniamnist
  from medfusion.classify import aggregate
  from medfusion.classify.classifier import DiffusionClassifier

  config = pneumoniamnist.get_config()
  config.data.tfds_data_dir = tfds_dir
  config.classify.num_draws = 2
  split = pipeline.load_split(config.data, "val")
  assert len(split.labels) == 524
  images, labels = split.images[:128].astype(np.float32) / 127.5 - 1.0, split.labels[:128]
  indices = np.arange(len(images), dtype=np.int32)
  model = modeldir.load_ema_params(config, os.path.join(ROOT, "pretrained", "pneumoniamnist"))
  params = model.params
  assert model.step == 3400
  predictions = {}
  for dtype in ("float32", "bfloat16"):
    config.classify.dtype = dtype
    tally = DiffusionClassifier(config, params).score(images, indices)
    predictions[dtype] = {
      "vote": aggregate.vote_prediction(tally.votes, tally.mean_errors),
      "mean": aggregate.mean_prediction(tally.mean_errors),
    }
  for name in ("vote", "mean"):
    fp32, bf16 = predictions["float32"][name], predictions["bfloat16"][name]
    assert np.mean(fp32 == bf16) >= 0.99, (name, np.mean(fp32 == bf16))
    assert np.mean(fp32 == labels) >= 0.85, (name, np.mean(fp32 == labels))  # the model classifies


def test_help_exits_0_with_the_commands_flags_and_the_config_fields():
  train, score = run_pythons(
    [
      ["-m", "medfusion.train", "--help", "--config=configs/pneumoniamnist.py:smoke"],
      ["-m", "medfusion.score", "--help"],
    ],
    check=False,
  )
  assert train.returncode == 0, train.stderr[-2000:]
  assert "python -m medfusion.train" in train.stdout and "--workdir" in train.stdout
  assert "classify.num_draws = 8  # K (timestep, noise) draws per image" in train.stdout
  assert score.returncode == 0 and "--max_examples" in score.stdout
