"""The model directory verifies what it loads, and calibration is keyed by what changes the error scale."""

import json
import os
import shutil

import fakes
import jax
import numpy as np
import pytest
import train_losses_script
from conftest import ROOT, run_python

from configs import pneumoniamnist
from medfusion import checkpoint, modeldir, runtime, sharding
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.evaluation import split_scoring
from medfusion.evaluation.report import Totals
from medfusion.training import state as state_lib

SHIPPED = os.path.join(ROOT, "pretrained", "pneumoniamnist")


def test_damaged_exported_model_fails_in_one_line_and_writes_nothing(tmp_path, tiny_arrays):
  model = tmp_path / "model"
  shutil.copytree(SHIPPED, model)
  data_files = [os.path.join(r, f) for r, _, fs in os.walk(model / "params") for f in fs]
  target = max(data_files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.seek(100)
    f.write(np.random.default_rng(0).bytes(1000))
  output = tmp_path / "out"
  proc = run_python(
    [
      "-m",
      "medfusion.score",
      "--config=configs/pneumoniamnist.py",
      f"--workdir={model}",
      f"--output={output}",
      "--max_examples=4",
      "--config.data.source=arrays",  # PneumoniaMNIST's splits without TensorFlow to start
      f"--config.data.folder={tiny_arrays}",
    ],
    check=False,
  )
  fakes.assert_one_line_error(proc, os.path.basename(target), "changed since export")
  assert not output.exists()


def _export(params, directory, step=7):
  checkpoint.export_params(params, str(directory))
  modeldir.write_manifest(str(directory))
  (directory / modeldir.EXPORT_META).write_text(json.dumps({"checkpoint_step": step}))


@pytest.fixture(scope="module")
def tiny():
  config = train_losses_script.tiny_config("")
  params = runtime.run_once(lambda: state_lib.init_params(config, state_lib.make_model(config)))
  return config, jax.device_get(params)


def test_nonfinite_parameters_are_named(tiny, tmp_path):
  config, params = tiny
  bad = jax.tree.map(np.array, params)
  bad["Conv_0"]["bias"][0] = np.nan
  _export(bad, tmp_path)
  with pytest.raises(modeldir.ModelError, match=r"step 7, exported\): parameter Conv_0/bias holds NaN"):
    modeldir.load_ema_params(config, str(tmp_path))
  _export(params, tmp_path / "good")
  assert modeldir.load_ema_params(config, str(tmp_path / "good")).which == "exported"


def test_nonfinite_kernel_errors_name_the_model(tiny):
  config, params = tiny
  huge = jax.tree.map(lambda p: np.full_like(p, 1e30), params)  # finite, but overflows in the network
  clf = DiffusionClassifier(config, huge, source="checkpoint X (step 7)")
  images = np.zeros((2, 32, 32, 1), np.float32)
  with pytest.raises(FloatingPointError, match=r"checkpoint X \(step 7\) gave NaN or infinite denoising errors"):
    clf.score(images, np.arange(2))


def test_calibration_is_keyed_by_the_error_scale_and_an_explicit_temperature_wins(tmp_path):
  config = pneumoniamnist.get_config()
  modeldir.store_temperature(str(tmp_path), modeldir.calibration_key(config, 3400), 0.02, "val", 10)
  assert modeldir.temperature(config, str(tmp_path), 3400)[0] == 0.02
  for field, value in (("num_draws", 8), ("error", "x_mse"), ("t_min", 0.2), ("timesteps", "uniform")):
    other = config.copy_and_resolve_references()
    other.classify[field] = value
    assert modeldir.temperature(other, str(tmp_path), 3400) == (None, "none stored"), field
  assert modeldir.temperature(config, str(tmp_path), 3000)[0] is None  # another checkpoint
  config.classify.temperature = 0.5
  assert modeldir.temperature(config, str(tmp_path), 3400) == (0.5, "config.classify.temperature")


def test_unfitted_split_falls_back_with_a_warning(tmp_path, caplog):
  config = pneumoniamnist.get_config()
  totals = Totals(np.arange(2), np.array([0, 1]), np.ones((2, 2), int), np.ones((2, 2)), np.ones(2), np.ones(2))
  temperature, source = split_scoring._fit_or_fall_back(config, str(tmp_path), 3400, "test", totals)
  assert temperature == 1.0 and "fallback" in source
  assert "No temperature fitted" in caplog.text
  assert not os.listdir(tmp_path)


def test_empty_best_folder_falls_back_to_the_latest_and_says_so(lesion_model, tmp_path):
  config, workdir = lesion_model
  copy = tmp_path / "w"
  shutil.copytree(workdir, copy)
  for step in os.listdir(copy / "best"):
    shutil.rmtree(copy / "best" / step)
  loaded = modeldir.load_ema_params(config, str(copy))
  assert loaded.which == "latest: best/ is empty" and loaded.path.endswith(f"checkpoints/{loaded.step}")
  # Only the EMA parameters are read (no optimizer), and they are the whole train state's.
  model, optimizer = state_lib.make_model(config), state_lib.make_optimizer(config.train)
  abstract = state_lib.abstract_state(config, model, optimizer, sharding.replicated(sharding.make_mesh()))
  state, step, _ = checkpoint.restore_for_inference(str(copy), abstract)
  assert int(step) == loaded.step
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(loaded.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_shipped_models_stored_config_loads_with_fields_added_since():
  from medfusion import configcheck, stored_config

  config = stored_config.get_config(SHIPPED)
  configcheck.check(config)
  assert config.classify.prior == "uniform" and config.model.wavelet is False
  assert config.compilation_cache == pneumoniamnist.get_config().compilation_cache  # the cache on, as for new models
  assert config.data.npz.endswith("data/pneumoniamnist_28.npz") and os.path.isabs(config.data.npz)


@pytest.mark.parametrize("name", ["pneumoniamnist_resnet18", "dermamnist_resnet18"])
def test_a_shipped_resnet_baseline_gives_the_probabilities_it_shipped_with(tfds_dir, name):
  """Each shipped ResNet-18 loads from its own config (manifest checked, no optimizer state), was chosen on
  validation half A, gives the validation probabilities stored beside it (first 64 images) and reports its
  config's positive class (none in the PneumoniaMNIST one's config.json, stored before ResNet configs had one)."""
  from medfusion import configcheck, stored_config
  from medfusion.data import pipeline
  from medfusion.evaluation import predictors

  shipped = os.path.join(ROOT, "pretrained", name)
  config = stored_config.get_config(shipped)
  configcheck.check(config)
  assert config.evals.classify.half == "A" and config.model.width == 64
  config.data.tfds_data_dir = tfds_dir
  model = modeldir.load(config, shipped)
  assert model.which == "exported" and set(model.params) == {"params", "batch_stats"}
  split = pipeline.load_split(config.data, "val")
  part = pipeline.Split(split.images[:64], split.labels[:64], None)
  totals, result = predictors.score_in_memory(config, model, part, temperature=1.0)
  melanoma = result["softmax"].get("positive_class", {}).get("name")  # DermaMNIST's ResNet reports it, as its config
  assert melanoma == ("mel" if name == "dermamnist_resnet18" else None)
  with np.load(os.path.join(shipped, "predictions_val.npz")) as stored:
    np.testing.assert_array_equal(stored["labels"][:64], totals.label)
    np.testing.assert_allclose(totals.probs, stored["probs"][:64], rtol=1e-4, atol=1e-6)


def test_multiclass_scoring_reports_per_class_metrics_a_positive_class_and_a_prior(tmp_path):
  """Seven classes, RGB (the DermaMNIST layout), an untrained tiny model: the multi-class outputs are all there."""

  config = train_losses_script.tiny_config(str(tmp_path / "tfds"))
  names = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
  config.data.update(
    npz=fakes.fake_npz(tmp_path / "derma.npz", n_train=21, n_test=14, shape=(28, 28, 3), num_classes=7)
  )
  config.data.update(class_names=names, num_classes=7, num_channels=3)
  config.classify.update(num_draws=2, batch_size=8, temperature=0.01, prior="train", positive_class="mel")
  params = runtime.run_once(lambda: state_lib.init_params(config, state_lib.make_model(config)))
  params = jax.tree.map(lambda p: p + 0.05 * np.random.default_rng(0).standard_normal(p.shape, np.float32), params)
  _export(jax.device_get(params), tmp_path / "model")
  result = split_scoring.score_split(config, str(tmp_path / "model"), "test", str(tmp_path / "out"))
  assert result["n"] == 14 and result["prior"] == pytest.approx([1 / 7] * 7)  # the fake train split is balanced
  classes = result["mean"]["classes"]
  assert set(classes["per_class"]) == set(names) and np.array(classes["confusion_matrix"]).sum() == 14
  assert set(result["vote"]["positive_class"]) == {"name", "sensitivity", "specificity", "auc"}
  assert "misclassification_auroc" in result["vote"]
  assert os.path.getsize(tmp_path / "out" / "confusion_matrix.png") > 1000


def test_a_fitted_temperature_is_stored_only_from_the_whole_eval_split_and_when_not_degenerate(tmp_path):
  config = pneumoniamnist.get_config()
  labels = np.arange(40) % 2
  informative = np.stack([0.05 + 0.002 * labels, 0.052 - 0.002 * labels], axis=1)  # the true class errs less
  informative = informative + np.random.default_rng(0).normal(0, 0.001, informative.shape)
  totals = Totals(np.arange(40), labels, np.ones((40, 2), int), informative, np.ones(40), np.ones(40))
  _, source = split_scoring._fit_or_fall_back(config, str(tmp_path), 3400, "val", totals, whole=False)
  assert "not stored" in source and not os.listdir(tmp_path)
  flat = Totals(np.arange(40), labels, np.ones((40, 2), int), np.full((40, 2), 0.05), np.ones(40), np.ones(40))
  _, source = split_scoring._fit_or_fall_back(config, str(tmp_path), 3400, "val", flat)
  assert source.startswith("degenerate") and not os.listdir(tmp_path)
  temperature, source = split_scoring._fit_or_fall_back(config, str(tmp_path), 3400, "val", totals)
  assert source == "fitted on val now"
  assert modeldir.stored_temperature(str(tmp_path), modeldir.calibration_key(config, 3400)) == temperature
  config.classify.prune_stages = ((8, 1), (8, 1))  # pruning places the mean errors of dropped classes: its own fit
  assert modeldir.stored_temperature(str(tmp_path), modeldir.calibration_key(config, 3400)) is None
