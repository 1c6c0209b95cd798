"""Schedules, x/eps/v conversions and the loss weighting: exact identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from medfusion.diffusion import losses, schedules

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
