"""The vectorized error kernel against a naive loop over classes and draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from medfusion import runtime
from medfusion.classify import aggregate, classifier, draws, kernel
from medfusion.diffusion import schedules
from medfusion.evaluation import draw_analysis
from medfusion.training import state as state_lib


@pytest.fixture(scope="module")
def setup():
  config = default.smoke(default.get_config())
  config.classify.num_draws = 8
  config.classify.batch_size = 4
  config.classify.chunk_size = 12  # does not divide B*C*K: exercises the padded last chunk
  model = state_lib.make_model(config)
  params = runtime.run_once(lambda: state_lib.init_params(config, model))
  # Perturb the zero-initialised output layers so the classes differ.
  rng = np.random.default_rng(3)  # host-side noise: jax.random per leaf would compile for ~25 s
  params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
  images = np.asarray(jax.random.uniform(jax.random.key(4), (4, 32, 32, 1), minval=-1, maxval=1))
  return config, model, params, images


def naive_errors(config, model, params, images, indices):
  spec = kernel.KernelSpec.from_config(config)
  k, c = config.classify.num_draws, config.data.num_classes
  out = np.zeros((len(images), c, k))
  apply = jax.jit(model.apply)
  for b, (image, index) in enumerate(zip(images, indices, strict=True)):
    key = draws.image_key(config.seed, int(index))
    ts = draws.timesteps(key, k, spec.timesteps, spec.t_min, spec.t_max)
    views = draws.symmetries(key, k)
    for d in range(k):
      x = draws.apply_symmetry(jnp.asarray(image), views[d]) if spec.symmetries == "flips_rot90" else image
      eps = draws.noise(key, d, image.shape)[None]
      logsnr = spec.schedule.logsnr(ts[d])[None]
      z = schedules.diffuse(jnp.asarray(x)[None], eps, logsnr)
      for cls in range(c):
        pred = apply({"params": params}, z, logsnr, jnp.array([cls]))
        err = kernel.pair_error(spec.error, pred, x[None], eps, z, logsnr, spec.prediction)
        out[b, cls, d] = float(err[0])
  return out


def test_kernel_equals_naive_loop(setup):
  config, model, params, images = setup
  indices = np.array([7, 0, 3, 11])
  clf = classifier.DiffusionClassifier(config, params)
  k, c = config.classify.num_draws, config.data.num_classes
  errors = clf.errors(images, indices, np.broadcast_to(np.arange(k), (4, k)), np.broadcast_to(np.arange(c), (4, c)))
  np.testing.assert_allclose(errors, naive_errors(config, model, params, images, indices), rtol=2e-4, atol=1e-6)


def test_symmetry_draws_equal_the_naive_loop_on_transformed_images(setup):
  """With classify.symmetries, draw k of every class sees the same flipped/turned image (comparisons stay paired):
  the kernel equals the loop that transforms the image first, and differs from the untransformed errors."""
  config, model, params, images = setup
  config = config.copy_and_resolve_references()
  config.classify.symmetries = "flips_rot90"
  indices = np.array([7, 0, 3, 11])
  k, c = config.classify.num_draws, config.data.num_classes
  draw_ids, class_ids = np.broadcast_to(np.arange(k), (4, k)), np.broadcast_to(np.arange(c), (4, c))
  errors = classifier.DiffusionClassifier(config, params).errors(images, indices, draw_ids, class_ids)
  np.testing.assert_allclose(errors, naive_errors(config, model, params, images, indices), rtol=2e-4, atol=1e-6)
  config.classify.symmetries = "none"
  plain = classifier.DiffusionClassifier(config, params).errors(images, indices, draw_ids, class_ids)
  assert not np.allclose(errors, plain, rtol=1e-3)


def test_score_does_not_depend_on_batch_size_or_order(setup):
  config, _, params, images = setup
  indices = np.array([7, 0, 3, 11])
  full = classifier.DiffusionClassifier(config, params).score(images, indices)
  config = config.copy_and_resolve_references()
  config.classify.batch_size = 2
  halves = classifier.DiffusionClassifier(config, params).score(images[::-1].copy(), indices[::-1].copy())
  np.testing.assert_allclose(halves.mean_errors[::-1], full.mean_errors, rtol=1e-5)
  np.testing.assert_array_equal(halves.votes[::-1], full.votes)


def test_adaptive_exact_matches_full_budget(setup):
  config, _, params, images = setup
  indices = np.arange(4)
  full = classifier.DiffusionClassifier(config, params).score(images, indices)
  config = config.copy_and_resolve_references()
  config.classify.adaptive = "exact"
  config.classify.draws_per_round = 2
  adaptive = classifier.DiffusionClassifier(config, params).score(images, indices)
  np.testing.assert_array_equal(
    aggregate.vote_prediction(adaptive.votes, adaptive.mean_errors),
    aggregate.vote_prediction(full.votes, full.mean_errors),
  )
  assert adaptive.nfe.sum() <= full.nfe.sum()
  assert (full.nfe == config.classify.num_draws * config.data.num_classes).all()


def test_nan_image_is_rejected(setup):
  config, _, params, images = setup
  bad = images.copy()
  bad[2, 0, 0, 0] = np.nan
  with pytest.raises(FloatingPointError, match="image 5"):
    classifier.DiffusionClassifier(config, params).score(bad, np.array([3, 4, 5, 6]))


@pytest.mark.parametrize("adaptive", ["sequential", "predictive"])
def test_early_stopping_through_the_classifier(setup, adaptive):
  """Each image's tally is that of the first `draws` draws of the full error tensor, and it stopped at the first
  look where the rule said so (delta = 0.5 makes unanimous images stop after 4 of 8 draws; `predictive`, whose mean
  part waits for aggregate.PREDICTIVE_MEAN_MIN_DRAWS draws, gets 16)."""
  config, _, params, images = setup
  config = config.copy_and_resolve_references()
  config.classify.update(adaptive=adaptive, draws_per_round=2, delta=0.5)
  if adaptive == "predictive":
    config.classify.num_draws = 16
    assert aggregate.PREDICTIVE_MEAN_MIN_DRAWS < 16
  indices = np.array([7, 0, 3, 11])
  clf = classifier.DiffusionClassifier(config, params)
  finished = []
  tally = clf.score(images, indices, progress=finished.append)
  assert sum(finished) == 4
  errors = clf.draw_errors(images, indices)
  k, r = config.classify.num_draws, config.classify.draws_per_round
  rule = aggregate.StoppingRule.build(adaptive, k, r, 2, 0.5)
  assert tally.draws.min() < k  # the rule stopped some image early
  for i, used in enumerate(tally.draws):
    votes = aggregate.votes_from_errors(errors[i : i + 1, :, :used])
    np.testing.assert_array_equal(tally.votes[i], votes[0])
    np.testing.assert_allclose(tally.mean_errors[i], errors[i, :, :used].mean(axis=1), rtol=1e-6)
    for look in range(r, used + 1, r):
      seen = errors[i : i + 1, :, :look]
      sums, grams = seen.sum(axis=2), np.einsum("bcr,bdr->bcd", seen, seen)
      stop = rule.decided(aggregate.votes_from_errors(seen), np.array([k - look]), sums, grams)[0]
      assert stop == (look == used), (i, look, used)


def test_class_pruning_through_the_classifier(setup):
  """Stage 1 scores both classes on draws 0-3, stage 2 only the better one on draws 4-7."""
  config, _, params, images = setup
  config = config.copy_and_resolve_references()
  config.classify.prune_stages = ((4, 1), (4, 1))  # 4 draws on both classes, keep 1; 4 more on it
  indices = np.arange(4)
  tally = classifier.DiffusionClassifier(config, params).score(images, indices)
  errors = classifier.DiffusionClassifier(config, params).draw_errors(images, indices)
  assert (tally.nfe == 4 * 2 + 4 * 1).all()
  kept = np.argmin(errors[:, :, :4].mean(axis=2), axis=1)
  for i in range(4):
    dropped = 1 - kept[i]
    np.testing.assert_allclose(tally.mean_errors[i, kept[i]], errors[i, kept[i]].mean(), rtol=1e-6)
    # a pruned class is placed by its paired gap on the draws it shared with the leader: kept mean + that gap
    gap = errors[i, dropped, :4].astype(np.float64).mean() - errors[i, kept[i], :4].astype(np.float64).mean()
    np.testing.assert_allclose(tally.pruned_gap[i, dropped], gap, rtol=1e-5)
    np.testing.assert_allclose(tally.mean_errors[i, dropped], errors[i, kept[i]].mean() + gap, rtol=1e-5)
    assert np.isnan(tally.pruned_gap[i, kept[i]])
    assert (
      tally.votes[i].sum() == 8
      and tally.votes[i, dropped] == aggregate.votes_from_errors(errors[i : i + 1, :, :4])[0, dropped]
    )
  # medfusion.sweep's replay of the same schedule on the full error tensor does what the classifier did
  labels = np.array([0, 1, 0, 1])
  replay = draw_analysis.prune_sweep(errors, labels, [config.classify.prune_stages])
  assert replay["nfe_per_image"] == [12.0]
  assert replay["mean_accuracy"][0] == np.mean(aggregate.mean_prediction(tally.mean_errors) == labels)
  assert replay["vote_accuracy"][0] == np.mean(aggregate.vote_prediction(tally.votes, tally.mean_errors) == labels)
