"""Schedules, x/eps/v conversions and the loss weighting: exact identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from medfusion.diffusion import losses, schedules
from medfusion.errors import ConfigError

jax.config.update("jax_enable_x64", False)


def test_cosine_schedule_endpoints_and_monotone():
  s = schedules.Schedule("cosine", -15.0, 15.0)
  t = jnp.linspace(0.0, 1.0, 101)
  lam = s.logsnr(t)
  np.testing.assert_allclose(lam[0], 15.0, atol=1e-4)
  np.testing.assert_allclose(lam[-1], -15.0, atol=1e-3)
  assert np.all(np.diff(np.asarray(lam)) < 0)
  # Unclipped cosine at t=0.5 is log-SNR 0 (alpha = sigma); the clipping is symmetric so it stays 0.
  np.testing.assert_allclose(s.logsnr(0.5), 0.0, atol=1e-5)


def test_shifted_cosine_shift_by_resolution():
  config = ConfigDict(
    {"schedule": "shifted_cosine", "shift_base_resolution": 32, "logsnr_min": -15.0, "logsnr_max": 15.0}
  )
  s = schedules.Schedule.from_config(config, image_size=128)
  np.testing.assert_allclose(s.shift, 2 * np.log(32 / 128), rtol=1e-6)
  base = schedules.Schedule("cosine", -15.0, 15.0)
  np.testing.assert_allclose(s.logsnr(0.3), base.logsnr(0.3) + 2 * np.log(0.25), rtol=1e-5)


def test_alpha_sigma_variance_preserving():
  lam = jnp.linspace(-15, 15, 31)
  a, s = schedules.alpha_sigma(lam)
  np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(jnp.log(a**2 / s**2), lam, atol=1e-3)


@pytest.mark.parametrize("logsnr", [-6.0, 0.0, 4.0])
def test_conversions_are_inverse(logsnr):
  kx, ke = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, 4, 4, 1))
  eps = jax.random.normal(ke, x.shape)
  lam = jnp.full((2,), logsnr)
  z = schedules.diffuse(x, eps, lam)
  v = schedules.v_from_x_eps(x, eps, lam)
  np.testing.assert_allclose(schedules.x_from_z_v(z, v, lam), x, atol=1e-5)
  np.testing.assert_allclose(schedules.eps_from_z_v(z, v, lam), eps, atol=1e-5)
  np.testing.assert_allclose(schedules.x_from_z_eps(z, eps, lam), x, atol=1e-4)
  np.testing.assert_allclose(schedules.eps_from_z_x(z, x, lam), eps, atol=1e-4)
  for prediction, out in (("v", v), ("eps", eps)):
    e, xh, vh = schedules.predict_eps_x_v(out, z, lam, prediction)
    np.testing.assert_allclose(e, eps, atol=1e-4)
    np.testing.assert_allclose(xh, x, atol=1e-4)
    np.testing.assert_allclose(vh, v, atol=1e-4)


def test_min_snr_weights_agree_across_spaces():
  """min(snr, g) * |x_hat - x|^2 equals the weighted eps- and v-space errors."""
  lam = jnp.array([-3.0, 0.5, 5.0])
  g = 5.0
  snr = jnp.exp(lam)
  _, sigma = schedules.alpha_sigma(lam)
  alpha, _ = schedules.alpha_sigma(lam)
  # |x err|^2 = sigma^2 |v err|^2 = (sigma/alpha)^2 |eps err|^2 for the same prediction error.
  x_w = jnp.minimum(snr, g)
  np.testing.assert_allclose(losses.loss_weight(lam, "v", "min_snr", g), x_w * sigma**2, rtol=1e-5)
  np.testing.assert_allclose(losses.loss_weight(lam, "eps", "min_snr", g), x_w * (sigma / alpha) ** 2, rtol=1e-5)
  np.testing.assert_allclose(losses.loss_weight(lam, "v", "uniform", g), 1.0)


def test_label_dropout_rate():
  labels = jnp.zeros((20000,), jnp.int32)
  dropped = losses.drop_labels(jax.random.key(1), labels, 0.1, null_class=2)
  assert set(np.unique(dropped)) == {0, 2}
  assert abs(float(jnp.mean(dropped == 2)) - 0.1) < 0.01


def test_bad_schedule_name():
  config = ConfigDict({"schedule": "linear", "shift_base_resolution": 32, "logsnr_min": -15.0, "logsnr_max": 15.0})
  with pytest.raises(ValueError, match="schedule='linear'"):
    schedules.Schedule.from_config(config, 32)


def test_focused_timesteps_are_importance_weighted():
  """A share of draws in the focus range, weighted by 1 / density: E[w] = 1 and E[w f(t)] = the uniform mean."""
  t, w = losses.training_timesteps(jax.random.key(0), 200_000, 0.5, (0.1, 0.9))
  t, w = np.asarray(t), np.asarray(w)
  inside = (t >= 0.1) & (t <= 0.9)
  assert abs(inside.mean() - (0.5 + 0.5 * 0.8)) < 0.01  # half the draws in the range, plus the uniform ones there
  np.testing.assert_allclose(w[inside], 1 / (0.5 + 0.5 / 0.8), rtol=1e-5)
  np.testing.assert_allclose(w[~inside], 2.0, rtol=1e-5)
  assert abs(w.mean() - 1.0) < 0.01
  assert abs(np.mean(w * t**2) - 1 / 3) < 0.01  # the integral of t^2 over [0, 1]
  t0, w0 = losses.training_timesteps(jax.random.key(0), 8, 0.0, (0.1, 0.9))
  np.testing.assert_array_equal(w0, 1.0)
  np.testing.assert_array_equal(t0, jax.random.uniform(jax.random.key(0), (8,)))  # today's draws, unchanged


def test_class_logits_are_scale_free():
  errors = jnp.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
  logits = losses.class_logits(errors, 0.5)
  np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6)  # the same relative errors, the same logits
  assert int(jnp.argmax(logits[0])) == 0  # the lowest error is the most likely class


def _toy_apply(params, z, logsnr, labels):
  """A class-conditional 'denoiser' small enough to differentiate in a test: a per-class scale and offset of z."""
  del logsnr
  return z * params["scale"][labels][:, None, None, None] + params["offset"][labels][:, None, None, None]


def test_class_loss_gradient_lowers_the_cross_entropy():
  """The classification term is differentiable and a gradient step on it lowers it (a tiny model, two classes)."""
  schedule = schedules.Schedule("cosine", -15.0, 15.0)
  spec = losses.LossSpec(prediction="eps", class_weight=1.0, focus_range=(0.2, 0.8))
  x = jnp.concatenate([jnp.full((4, 4, 4, 1), -0.5), jnp.full((4, 4, 4, 1), 0.5)])
  labels = jnp.array([0] * 4 + [1] * 4)
  params = {"scale": jnp.array([0.5, 0.5]), "offset": jnp.array([0.0, 0.0])}

  def ce(p):
    return losses.class_loss(lambda z, s, c: _toy_apply(p, z, s, c), x, labels, jax.random.key(3), schedule, spec, 2)

  value, grads = jax.jit(jax.value_and_grad(ce))(params)
  np.testing.assert_allclose(value, np.log(2.0), rtol=1e-5)  # identical classes: chance
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree.leaves(grads))
  stepped = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
  assert float(jax.jit(ce)(stepped)) < float(value) - 1e-3


def test_loss_spec_rejects_bad_fields():
  with pytest.raises(ConfigError, match="t_focus"):
    losses.LossSpec(t_focus=1.0)
  with pytest.raises(ConfigError, match="class_loss_temperature"):
    losses.LossSpec(class_temperature=0.0)
  with pytest.raises(ConfigError, match="class_loss_every"):
    losses.LossSpec(class_every=0)
