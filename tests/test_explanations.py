"""Sampling, counterfactuals, explanation maps and their scores; medfusion.sample and medfusion.explain end to end."""

import dataclasses
import json
import math
import os

import explain_sampler_script
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LESION_MODEL_FLAGS, ROOT, StartedPythons, run_pythons

from configs import default
from medfusion import configcheck, stored_config
from medfusion.classify import classifier
from medfusion.diffusion import schedules
from medfusion.errors import ConfigError
from medfusion.explanations import counterfactual, maps, run, scores
from medfusion.explanations import sampler as sampler_lib
from medfusion.models.resnet import ResNet, ResNetConfig

# --- Sampler --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
  """(config, params, images) of a tiny perturbed random model (explain_sampler_script.setup), batches of 4."""
  return explain_sampler_script.setup(batch_size=4)


def oracle_spec(kind: str, steps: int = 8) -> sampler_lib.SamplerSpec:
  return sampler_lib.SamplerSpec(0, steps, 0.0, kind, "float32", 2, "v", schedules.Schedule(), 2)


def oracle(x):
  """A v-prediction 'model' that knows the clean image x: its x_hat is x from any z."""

  def apply_fn(z, logsnr, labels):
    del labels
    eps = schedules.eps_from_z_x(z, x, logsnr)
    return schedules.v_from_x_eps(x, eps, logsnr)

  return apply_fn


@pytest.mark.parametrize("kind", sampler_lib.SAMPLERS)
def test_denoising_with_a_perfect_model_returns_its_image(kind):
  x = jnp.asarray(np.random.default_rng(0).uniform(-0.9, 0.9, (2, 4, 4, 1)), jnp.float32)
  keys = sampler_lib.example_keys(0, sampler_lib.SAMPLE_STREAM, jnp.arange(2))
  z1 = sampler_lib.initial_noise(keys, (4, 4, 1))
  labels = jnp.zeros(2, jnp.int32)
  out = sampler_lib.denoise(oracle(x), oracle_spec(kind), z1, labels, keys, 1.0, 8, kind, 0.0)
  np.testing.assert_allclose(out, x, atol=2e-3)


def test_ddpm_step_is_the_gaussian_posterior():
  schedule = schedules.Schedule()
  logsnr_t, logsnr_s = schedule.logsnr(jnp.array([0.6])), schedule.logsnr(jnp.array([0.4]))
  (at, st), (as_, ss) = schedules.alpha_sigma(logsnr_t), schedules.alpha_sigma(logsnr_s)
  z, x, noise = jnp.full((1, 2), 0.3), jnp.full((1, 2), -0.5), jnp.full((1, 2), 1.0)
  # q(z_s | z_t, x): mean (a_ts s_s^2 / s_t^2) z + (a_s s_ts^2 / s_t^2) x, variance s_ts^2 s_s^2 / s_t^2.
  a_ts, s_ts2 = at / as_, st**2 - (at / as_) ** 2 * ss**2
  expected = a_ts * ss**2 / st**2 * z + as_ * s_ts2 / st**2 * x + jnp.sqrt(s_ts2 * ss**2 / st**2) * noise
  np.testing.assert_allclose(sampler_lib.ddpm_step(z, x, logsnr_t, logsnr_s, noise), expected, rtol=1e-5)


def test_guidance_weight_zero_is_the_conditional_prediction():
  calls = []

  def apply_fn(z, logsnr, labels):
    calls.append(len(labels))
    return z * (1.0 + labels[:, None].astype(jnp.float32)) + logsnr[:, None]

  z, logsnr, labels = jnp.ones((3, 2)), jnp.zeros(3), jnp.array([0, 1, 0])
  np.testing.assert_array_equal(
    sampler_lib.guided_output(apply_fn, z, logsnr, labels, 0.0, 2), apply_fn(z, logsnr, labels)
  )
  w = 2.5
  expected = (1 + w) * apply_fn(z, logsnr, labels) - w * apply_fn(z, logsnr, jnp.full(3, 2))
  calls.clear()
  np.testing.assert_allclose(sampler_lib.guided_output(apply_fn, z, logsnr, labels, w, 2), expected, rtol=1e-6)
  assert calls == [6]  # one call on the doubled batch


def test_samples_have_their_shape_are_deterministic_and_independent_of_batch_size(tiny):
  config, params, _ = tiny
  sampler = sampler_lib.Sampler(config, params)
  labels, indices = np.array([0, 1, 2, 0, 1]), np.arange(5)
  first = sampler.sample(labels, indices)
  assert first.shape == (5, 32, 32, 1) and first.dtype == np.float32
  assert first.min() >= -1.0 and first.max() <= 1.0
  np.testing.assert_array_equal(sampler.sample(labels, indices), first)
  np.testing.assert_allclose(sampler.sample(labels[::-1].copy(), indices[::-1].copy())[::-1], first, atol=1e-5)
  assert not np.allclose(first[0], first[3])  # another sample number, other noise
  other_seed = config.copy_and_resolve_references()
  other_seed.seed = 1
  assert not np.allclose(sampler_lib.Sampler(other_seed, params).sample(labels, indices), first)


def test_ddim_inversion_round_trip_reconstructs_the_image_at_small_t(tiny):
  config, params, images = tiny
  config = config.copy_and_resolve_references()
  config.explain.update(steps=200, guidance=0.0)  # t* = 0.05: 10 steps each way
  sampler = sampler_lib.Sampler(config, params)
  labels, indices = np.array([0, 1, 2]), np.arange(3)
  inverted = sampler.run(sampler_lib.Program("invert", 0.05), images, labels, indices)
  back = sampler.run(sampler_lib.Program("denoise", 0.05), inverted, labels, indices)
  noised = sampler.run(sampler_lib.Program("partial_noising", 0.05), images, labels, indices)
  round_trip, resampled = np.abs(back - images).mean(), np.abs(noised - images).mean()
  assert round_trip < 0.01
  assert round_trip < 0.2 * resampled  # fresh noise at the same t* changes the image far more


def test_counterfactuals_of_both_methods_pair_targets(tiny):
  config, params, images = tiny
  sampler = sampler_lib.Sampler(config, params)
  targets = np.array([[0, 1], [1, 0], [1, 1]])
  for method in counterfactual.METHODS:
    spec = counterfactual.CounterfactualSpec.from_config(config, method)
    out = counterfactual.counterfactuals(sampler, spec, images, np.arange(3), targets, np.array([0, 1, 0]))
    assert out.shape == (3, 2, 32, 32, 1)
    np.testing.assert_allclose(out[2, 0], out[2, 1], atol=1e-6)  # same image, same target, same noise
    assert not np.allclose(out[0, 0], out[0, 1])


def test_sampler_is_the_same_on_eight_devices():
  """Batches of 8 on 8 devices against batches of 4 (the programs the `tiny` fixture's tests compiled) on one."""
  eight_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": "tests"}
  with StartedPythons([["tests/explain_sampler_script.py"]], eight_devices) as started:
    single = explain_sampler_script.outputs(batch_size=4)  # while the other process starts
    (proc,) = started.results()
  sharded = json.loads(proc.stdout.strip().splitlines()[-1])
  assert single["devices"] == 1 and sharded["devices"] == 8
  for key in ("samples", "counterfactuals"):
    np.testing.assert_allclose(sharded[key], single[key], atol=1e-4)


def test_pixel_errors_are_the_kernel_errors_per_pixel(tiny):
  config, params, images = tiny
  config = config.copy_and_resolve_references()
  config.classify.update(num_draws=4, batch_size=2, chunk_size=3)  # chunks straddle (image, class) pairs
  clf = classifier.DiffusionClassifier(config, params)
  indices = np.array([4, 1, 7])
  errors, pixels = maps.class_pixel_errors(clf, images, indices)
  np.testing.assert_allclose(errors, clf.draw_errors(images, indices), rtol=1e-5)
  assert pixels.shape == (3, 2, 32, 32)
  np.testing.assert_allclose(pixels.mean(axis=(2, 3)), errors.mean(axis=2), rtol=1e-5)  # eps_mse, one channel


# --- Maps -------------------------------------------------------------------------------------------------------------


def square_image():
  image = np.full((16, 16, 1), -0.5, np.float32)
  edited = image.copy()
  edited[4:8, 10:14] = 0.7
  return image, edited


def test_counterfactual_difference_marks_what_changed():
  image, edited = square_image()
  raw = maps.counterfactual_difference(image, edited, 0.0)
  assert raw.min() == 0.0 and raw.max() == 1.0
  np.testing.assert_array_equal(raw > 0.5, np.abs(edited - image)[..., 0] > 0)
  smoothed = maps.counterfactual_difference(image, edited, 1.5)
  assert 0 < smoothed[4, 9] < 1 and np.unravel_index(np.argmax(smoothed), smoothed.shape) in {
    (5, 11),
    (5, 12),
    (6, 11),
    (6, 12),
  }
  assert not maps.counterfactual_difference(image, image, 1.0).any()  # nothing changed: all zeros


def test_error_difference_is_the_contrast_against_the_prediction():
  errors = np.zeros((3, 8, 8))
  errors[1, 2, 3] = 4.0  # class 1 denoises pixel (2, 3) badly
  errors[2] = 1.0
  m = maps.error_difference(errors, predicted=0, contrast=1, sigma=0.0)
  assert m[2, 3] == 1.0 and m.sum() == 1.0
  assert not maps.error_difference(errors, predicted=0, contrast=2, sigma=0.0).any()  # a constant difference
  assert maps.contrast_classes(np.array([[0.1, 0.3, 0.2], [0.5, 0.4, 0.6]]), np.array([0, 1])).tolist() == [2, 0]


def test_intensity_is_the_normalised_brightness():
  image, edited = square_image()
  m = maps.intensity(edited)
  assert m[5, 11] == 1.0 and m[0, 0] == 0.0


@pytest.fixture(scope="module")
def resnet():
  config = ResNetConfig(num_classes=2, width=4, image_size=16)
  model = ResNet(config)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  images = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  return model, variables, images


def test_grad_cam_is_cam_for_a_global_average_pooled_head(resnet):
  model, variables, images = resnet
  targets = np.array([0, 1, 1])
  cams = maps.grad_cam(model, variables, images, targets)
  assert cams.shape == (3, 16, 16) and cams.min() >= 0 and cams.max() <= 1
  # With global average pooling and one dense layer, Grad-CAM's weights are the dense kernel's column (CAM).
  _, state = model.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
  features = np.asarray(state["intermediates"]["BasicBlock_7"]["__call__"][0])
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
  for i, t in enumerate(targets):
    cam = np.maximum(features[i] @ kernel[:, t], 0.0)
    expected = maps.normalise(np.asarray(jax.image.resize(cam, (16, 16), "bilinear")))
    np.testing.assert_allclose(cams[i], expected, atol=1e-4)


def test_input_gradient_is_the_logit_gradient(resnet):
  model, variables, images = resnet
  saliency = maps.input_gradient(model, variables, images, np.array([1, 0, 1]), sigma=0.0)
  grad = jax.grad(lambda x: model.apply(variables, x)[0, 1])(jnp.asarray(images[:1]))
  np.testing.assert_allclose(saliency[0], maps.normalise(np.abs(np.asarray(grad))[0, ..., 0]), atol=1e-5)


# --- Scores -----------------------------------------------------------------------------------------------------------


def test_pointing_game_and_top_fraction_iou_on_hand_made_masks():
  mask = np.zeros((10, 10, 1), np.uint8)
  mask[2:4, 2:4] = 1  # 4 pixels
  saliency = np.zeros((10, 10))
  saliency[3, 3], saliency[2, 2], saliency[8, 8] = 1.0, 0.9, 0.8
  assert scores.pointing_game(saliency, mask)
  saliency[8, 8] = 2.0
  assert not scores.pointing_game(saliency, mask)
  # top 5 % of 100 pixels = 5: (8,8), (3,3), (2,2) and the first two zeros in row-major order (0,0), (0,1).
  assert scores.top_fraction_iou(saliency, mask) == pytest.approx(2 / 7)
  assert scores.top_fraction_iou(saliency, mask, fraction=0.04) == pytest.approx(2 / 6)
  perfect = mask[..., 0].astype(float)
  assert scores.top_fraction_iou(perfect, mask, fraction=0.04) == 1.0
  # the 4 highest pixels: (8,8), (3,3), (2,2), then (0,0): two of them in the mask
  assert scores.mask_size_precision(saliency, mask) == 0.5
  assert scores.mask_size_precision(perfect, mask) == 1.0
  assert np.isnan(scores.mask_size_precision(saliency, np.zeros((10, 10))))


def test_proximity_and_flip_rate():
  image = np.zeros((4, 4, 1))
  edited = image.copy()
  edited[0, 0] = 1.0
  edited[3, 3] = 0.5
  mask = np.zeros((4, 4), bool)
  mask[:2, :2] = True
  assert scores.proximity(image, edited, mask) == {"inside": 0.25, "outside": pytest.approx(0.5 / 12)}
  assert scores.proximity(image, edited) == {"whole": pytest.approx(1.5 / 16)}
  assert math.isnan(scores.proximity(image, edited, np.zeros((4, 4)))["inside"])
  assert scores.flip_rate([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_choose_selects_errors_and_uncertain_images():
  errors = np.zeros((4, 2, 4))
  errors[:, 1] = [[1, 1, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, 1], [-1, -1, -1, -1]]  # votes for class 1: 0, 2, 3, 4
  classified = run.Classified.from_errors(errors)
  labels = np.array([1, 0, 0, 1])
  assert classified.prediction.tolist() == [0, 0, 1, 1]
  assert run.choose("errors", 5, labels, classified, 0).tolist() == [0, 2]
  assert run.choose("errors", 1, labels, classified, 0).tolist() == [0]  # the most confident error
  assert run.choose("uncertain", 1, labels, classified, 0).tolist() == [1]  # 2 of 4 votes
  assert run.choose("first", 3, labels, None, 0).tolist() == [0, 1, 2]
  assert sorted(run.choose("random", 2, labels, None, 7).tolist()) == run.choose("random", 2, labels, None, 7).tolist()


# --- Config -----------------------------------------------------------------------------------------------------------


def test_stored_configs_get_the_explain_defaults():
  assert stored_config.ADDED_FIELDS["explain"] == default.get_config().explain.to_dict()
  config = stored_config.get_config(os.path.join(os.path.dirname(__file__), "..", "pretrained", "pneumoniamnist"))
  configcheck.check(config)
  assert config.explain.method == "ddim_inversion"


@pytest.mark.parametrize(
  ("field", "value"),
  [
    ("method", "sdedit"),
    ("t_star", 0.0),
    ("guidance", -1.0),
    ("steps", 0),
    ("sampler", "euler"),
    ("invert_class", "true"),
    ("smoothing_sigma", -1.0),
    ("dtype", "float16"),
    ("batch_size", 0),
  ],
)
def test_bad_explain_fields_are_named(field, value):
  config = default.get_config()
  config.explain[field] = value
  with pytest.raises(ConfigError, match=f"config.explain.{field}"):
    configcheck.check(config)


# --- Command lines ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesion_judge():
  """The ResNet-18 judge shipped with pretrained/synthetic_lesions (trained on synthetic_lesions, 32x32, classes
  healthy and lesion, like the lesion_model fixture)."""
  return os.path.join(ROOT, "pretrained", "synthetic_lesions", "judge")


def cli_flags(config, workdir):
  """--config=configs/synthetic_lesions.py:smoke with the lesion_model fixture's overrides, and small batches."""
  return [
    "--config=configs/synthetic_lesions.py:smoke",
    f"--workdir={workdir}",
    f"--config.data.tfds_data_dir={config.data.tfds_data_dir}",
    *LESION_MODEL_FLAGS,
    "--config.classify.batch_size=8",
    "--config.explain.batch_size=8",
  ]


def test_sample_command_writes_a_grid_and_arrays(lesion_model, tmp_path):
  config, workdir = lesion_model
  args = ["-m", "medfusion.sample", *cli_flags(config, workdir), "--class=lesion,healthy", "--num=3"]
  proc, bad = run_pythons(
    [[*args, f"--output={tmp_path / 'a'}"], [*args, "--class=tumour", f"--output={tmp_path / 'b'}"]], check=False
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["classes"] == ["lesion", "healthy"]
  with np.load(tmp_path / "a" / "samples.npz") as f:
    samples = f["samples"]
    assert samples.shape == (2, 3, 32, 32, 1) and f["classes"].tolist() == ["lesion", "healthy"]
  assert os.path.getsize(tmp_path / "a" / "samples.png") > 500
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
    "error: --class='tumour' is not one of ('healthy', 'lesion', 'null')"
  ]


def test_explain_command_writes_panels_gallery_and_metrics(lesion_model, lesion_judge, tmp_path):
  config, workdir = lesion_model
  output = tmp_path / "out"
  args = [*cli_flags(config, workdir), "--split=val", "--max_examples=16", "--num=4"]
  proc, bad = run_pythons(
    [
      [
        "-m",
        "medfusion.explain",
        *args,
        "--select=uncertain",
        f"--judge={lesion_judge}",
        "--evaluate",
        f"--output={output}",
      ],
      ["-m", "medfusion.explain", *args, "--select=worst", f"--output={tmp_path / 'bad'}"],
    ],
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["n"] == 4 and set(summary["counterfactuals"]) == set(counterfactual.METHODS)
  with open(output / "explain_metrics.json") as f:
    result = json.load(f)
  assert result["masks"] and result["pairs"] == 4 and result["closer_method"] in counterfactual.METHODS
  kinds = {"counterfactual_partial_noising", "counterfactual_ddim_inversion", "error_difference", "intensity"}
  assert set(result["maps"]) == kinds | {"grad_cam", "input_gradient"}
  for method in counterfactual.METHODS:
    entry = result["counterfactuals"][method]
    assert {"flip_rate_diffusion", "flip_rate_judge", "proximity_inside", "proximity_outside"} <= set(entry)
    assert 0.0 <= entry["flip_rate_diffusion"] <= 1.0 and 0.0 <= entry["flip_rate_judge"] <= 1.0
  with np.load(output / "explanations.npz") as f:
    indices = f["index"].tolist()
    assert len(indices) == 4 and f["counterfactuals_ddim_inversion"].shape == (4, 2, 32, 32, 1)
    assert f["map_grad_cam"].shape == (4, 32, 32) and f["masks"].shape == (4, 32, 32, 1)
  for index in indices:
    assert os.path.getsize(output / "panels" / f"{index:05d}.png") > 1000
  with open(output / "index.html") as f:
    page = f.read()
  assert all(f"panels/{index:05d}.png" in page for index in indices)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--select='worst'" in bad.stderr
  assert not os.path.exists(tmp_path / "bad")


def test_explain_without_masks_reports_flip_rates_and_whole_image_proximity(lesion_model, tmp_path, monkeypatch):
  from medfusion.data import pipeline

  config, workdir = lesion_model
  config = config.copy_and_resolve_references()
  config.classify.batch_size = 8
  config.explain.update(batch_size=8, method="ddim_inversion", error_map=False)
  load_split = pipeline.load_split
  monkeypatch.setattr(pipeline, "load_split", lambda *a: dataclasses.replace(load_split(*a), masks=None))
  result = run.explain_split(config, workdir, "val", str(tmp_path), 2, evaluate=True)
  metrics = result["metrics"]
  assert not metrics["masks"] and "maps" not in metrics
  for entry in metrics["counterfactuals"].values():
    assert set(entry) == {"flip_rate_diffusion", "proximity_whole"} and entry["proximity_whole"] > 0
  assert (tmp_path / "index.html").exists() and (tmp_path / "explain_metrics.json").exists()
