"""Sampling, counterfactuals, explanation maps, their scores and faithfulness curves, on tiny models (the commands and
the shipped model end to end: test_explain_commands.py)."""

import json
import math
import os
import types

import explain_sampler_script
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import StartedPythons

from configs import default
from medfusion import configcheck, stored_config
from medfusion.classify import classifier
from medfusion.diffusion import schedules
from medfusion.errors import ConfigError
from medfusion.explanations import counterfactual, evaluate, faithfulness, maps, results, run, saliency, scores
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
  errors, pixels = clf.draw_errors(images, indices, pixels=True)
  np.testing.assert_allclose(errors, clf.draw_errors(images, indices), rtol=1e-5)
  assert pixels.shape == (3, 2, 32, 32)
  np.testing.assert_allclose(pixels.mean(axis=(2, 3)), errors.mean(axis=2), rtol=1e-5)  # eps_mse, one channel
  broken = images.copy()
  broken[1, 3, 3] = np.nan
  with pytest.raises(FloatingPointError, match="image 1 has NaN"):  # the runner's checks hold for pixel errors too
    clf.draw_errors(broken, indices, pixels=True)


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


def host_init(model, shape):
  """Variables of `model` drawn on the host (He-scaled normal kernels, unit scales and variances, zero biases and
  means): initialising through JAX would compile a program per initializer and shape."""
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module")
def resnet():
  config = ResNetConfig(num_classes=2, width=4, image_size=16)
  model = ResNet(config)
  variables = host_init(model, (1, 16, 16, 1))
  images = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  return model, variables, images


def test_grad_cam_is_cam_for_a_global_average_pooled_head(resnet):
  model, variables, images = resnet
  targets = np.array([0, 1, 1])
  cams = saliency.grad_cam(model, variables, images, targets, "stage4")
  assert cams.shape == (3, 16, 16) and cams.min() >= 0 and cams.max() <= 1
  # With global average pooling and one dense layer, Grad-CAM's weights are the dense kernel's column (CAM).
  _, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))(
    variables, images
  )
  features = np.asarray(state["intermediates"]["BasicBlock_7"]["__call__"][0])
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
  for i, t in enumerate(targets):
    cam = np.maximum(features[i] @ kernel[:, t], 0.0)
    expected = maps.normalise(np.asarray(jax.image.resize(cam, (16, 16), "bilinear")))
    np.testing.assert_allclose(cams[i], expected, atol=1e-4)


def test_grad_cam_layers_are_named_by_stage(resnet):
  model, variables, images = resnet
  sizes = (2, 2, 2, 2)
  assert saliency.layer_names(sizes)[:3] == ["stage1.1", "stage1.2", "stage2.1"]
  assert saliency.block_index("stage3", sizes) == 5 and saliency.block_index("stage3.1", sizes) == 4
  for bad in ("stage5", "stage3.3", "layer4", "stage0"):
    with pytest.raises(ConfigError, match="grad_cam_layer"):
      saliency.block_index(bad, sizes)
  assert saliency.feature_sizes(model, variables, images) == {
    f"stage{s}.{b}": 16 // 2 ** (s - 1) for s in range(1, 5) for b in (1, 2)
  }
  cams = saliency.grad_cams(model, variables, images, np.array([0, 1, 1]))
  np.testing.assert_array_equal(cams["stage3.2"], saliency.grad_cam(model, variables, images, [0, 1, 1], "stage3"))
  assert not np.array_equal(cams["stage3.1"], cams["stage3.2"])


def test_input_gradient_is_the_logit_gradient(resnet):
  model, variables, images = resnet
  saliency_maps = saliency.gradient_map(model, variables, images, np.array([1, 0, 1]), "input_gradient", sigma=0.0)
  grad = jax.jit(jax.grad(lambda x: model.apply(variables, x)[0, 1]))(jnp.asarray(images[:1]))
  np.testing.assert_allclose(saliency_maps[0], maps.normalise(np.abs(np.asarray(grad))[0, ..., 0]), atol=1e-5)


def test_integrated_gradients_add_up_to_the_logit_change_and_smoothgrad_averages_gradients(resnet):
  model, variables, images = resnet
  targets = jnp.array([1, 0, 1])
  fns = saliency._jitted(model)
  attribution = np.asarray(fns["integrated_gradients"](variables, jnp.asarray(images), targets))
  apply = jax.jit(model.apply)
  logits = apply(variables, jnp.asarray(images))[jnp.arange(3), targets]
  black = apply(variables, -jnp.ones_like(images))[jnp.arange(3), targets]
  # completeness (Sundararajan et al. 2017), up to the Riemann sum's error
  np.testing.assert_allclose(attribution.sum(axis=(1, 2, 3)), logits - black, rtol=0.05, atol=0.05)
  smooth = np.asarray(fns["smoothgrad"](variables, jnp.asarray(images), targets, jax.random.key(0)))
  plain = np.asarray(fns["input_gradient"](variables, jnp.asarray(images), targets))
  assert smooth.shape == plain.shape and not np.allclose(smooth, plain)


def test_blob_marks_bright_spots_and_not_dark_ones():
  image = np.zeros((32, 32, 1), np.float32)
  image[8:11, 20:23] = 0.8  # bright
  image[22:25, 6:9] = -0.8  # dark
  m = maps.blob(image)
  assert np.unravel_index(np.argmax(m), m.shape) == (9, 21)
  assert m[23, 7] == 0.0  # the dark spot is the minimum


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


def test_pointing_game_tolerance_and_valid_flips():
  mask = np.zeros((10, 10), bool)
  mask[2:4, 2:4] = True
  saliency_map = np.zeros((10, 10))
  saliency_map[3, 5] = 1.0  # 2 pixels right of the mask
  assert not scores.pointing_game(saliency_map, mask)
  assert not scores.pointing_game(saliency_map, mask, tolerance=1)
  assert scores.pointing_game(saliency_map, mask, tolerance=2)
  saliency_map[3, 5], saliency_map[6, 6] = 0.0, 1.0  # (6, 6) is sqrt(18) pixels from (3, 3)
  assert not scores.pointing_game(saliency_map, mask, tolerance=4) and scores.pointing_game(saliency_map, mask, 4.3)
  valid = scores.valid_flips([1, 1, 0, 1], [1, 1, 1, 1], [0.01, 0.2, 0.01, 0.05], threshold=0.05)
  assert valid.tolist() == [True, False, False, False]  # flipped and close; too far; not flipped; at the threshold
  curve = scores.valid_flip_curve([1, 1, 0, 1], [1, 1, 1, 1], [0.01, 0.2, 0.01, np.inf], budgets=(0.01, 0.02, 0.3))
  assert curve["rates"] == [0.0, 0.25, 0.5] and curve["area"] == 0.25  # strict at 0.01; never-flipped stays out
  assert scores.valid_flip_curve([1], [1], [0.05])["budgets"] == list(scores.CHANGE_BUDGETS)


# --- Faithfulness -------------------------------------------------------------------------------------------------


def test_faithfulness_paths_remove_and_reveal_in_map_order():
  image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
  blurred = np.full_like(image, -1.0)
  order = faithfulness.pixel_order(image[..., 0])  # brightest first
  assert order[:2].tolist() == [15, 14]
  deletion = faithfulness.path(image, blurred, order, 4, "deletion")
  insertion = faithfulness.path(image, blurred, order, 4, "insertion")
  assert deletion.shape == (5, 4, 4, 1)
  np.testing.assert_array_equal(deletion[0], image)
  np.testing.assert_array_equal(deletion[-1], blurred)
  np.testing.assert_array_equal(insertion[0], blurred)
  assert (deletion[1] == -1).sum() == 4 and np.all(deletion[1][3] == -1)  # the brightest row went first
  np.testing.assert_array_equal(insertion[1][3], image[3])
  assert faithfulness.area(np.array([1.0, 1.0, 0.0])) == 0.75
  ties = faithfulness.pixel_order(np.zeros((4, 4)), seed=3)
  assert sorted(ties.tolist()) == list(range(16)) and ties.tolist() != list(range(16))  # ties in random order


def test_a_map_that_finds_the_evidence_beats_random_orders_which_sit_at_the_reference():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 0, (24, 16, 16, 1)).astype(np.float32)
  evidence = np.zeros((24, 16, 16), bool)
  for i in range(24):
    r, c = rng.integers(2, 12, 2)
    evidence[i, r : r + 3, c : c + 3] = True
    images[i, r : r + 3, c : c + 3] = 1.0

  def probability(x):  # a 'model' whose class-1 probability is the brightness of the brightest 9 pixels
    top = np.sort(x.reshape(len(x), -1), axis=1)[:, -9:].mean(axis=1)
    p = 1 / (1 + np.exp(-10 * (top - 0.5)))
    return np.stack([1 - p, p], axis=1)

  ex = types.SimpleNamespace(images=images, maps={"oracle": evidence.astype(np.float32)})
  out = evaluate.faithfulness_scores(ex, probability, np.ones(24, int), 16, ["oracle"])
  random = np.stack([maps.random_map((16, 16), 77 + i) for i in range(24)])
  ex.maps["random_map"] = random
  again = evaluate.faithfulness_scores(ex, probability, np.ones(24, int), 16, ["random_map"])
  assert out["oracle"]["deletion_auc"] < out["random"]["deletion_auc"] - 0.2
  assert out["oracle"]["insertion_auc"] > out["random"]["insertion_auc"] + 0.2
  for mode in faithfulness.MODES:  # one more random order lands at the reference (the mean of four; sd ~0.02)
    assert abs(again["random_map"][f"{mode}_auc"] - out["random"][f"{mode}_auc"]) < 0.08


def test_choose_selects_errors_and_uncertain_images():
  errors = np.zeros((4, 2, 4))
  errors[:, 1] = [[1, 1, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, 1], [-1, -1, -1, -1]]  # votes for class 1: 0, 2, 3, 4
  classified = results.Classified.from_errors(errors)
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
    ("grad_cam_layer", "stage5"),
    ("grad_cam_layer", "layer4"),
    ("valid_change", 0.0),
    ("faithfulness_steps", 1),
    ("faithfulness_draws", -1),
  ],
)
def test_bad_explain_fields_are_named(field, value):
  config = default.get_config()
  config.explain[field] = value
  with pytest.raises(ConfigError, match=f"config.explain.{field}"):
    configcheck.check(config)


# --- The hard synthetic variant ---------------------------------------------------------------------------------


def test_hard_variant_lesions_do_not_give_themselves_away_by_brightness():
  from scipy import ndimage

  from medfusion.data import synthetic_lesions

  assert {"hard", "hard_smoke"} <= {c.name for c in synthetic_lesions.SyntheticLesions.BUILDER_CONFIGS}
  precision = {"default": [], "hard": []}
  contrast = {kind: [] for kind in synthetic_lesions.HARD_KINDS}
  for index in range(1, 33, 2):  # 16 lesion images
    for variant in precision:
      image, mask, label = synthetic_lesions.render("test", index, 32, variant)
      assert label == 1 and mask.any()
      x = image.astype(np.float32) / 127.5 - 1.0
      precision[variant].append(scores.mask_size_precision(maps.blob(x), mask))
    inside = mask[..., 0] > 0
    around = ndimage.binary_dilation(inside, iterations=2) & ~inside
    contrast[synthetic_lesions.hard_kind(index)].append(x[inside].mean() - x[around].mean())
  healthy, _, _ = synthetic_lesions.render("test", 0, 32, "hard")
  np.testing.assert_array_equal(synthetic_lesions.render("test", 0, 32)[1], 0)
  assert np.mean(precision["default"]) > 0.4 and np.mean(precision["hard"]) < 0.2  # the blob detector fails
  assert np.mean(contrast["dark"]) < -0.2 and abs(np.mean(contrast["same_mean"])) < 0.1
  assert abs(np.mean(contrast["texture"])) < 0.1
  dots = healthy.astype(int) - synthetic_lesions.render("test", 0, 32)[0]  # the same body, plus the dots
  assert dots.min() >= 0 and dots.max() > 80  # healthy images of the hard variant carry bright dots too
  with pytest.raises(ValueError, match="variant"):
    synthetic_lesions.render("test", 0, 32, "easy")
