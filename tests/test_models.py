"""The denoisers: the Haar wavelet space, the DiT, the paper-scale presets' sizes, and tiny versions of each through
the classifier and the trainer unmodified."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from medfusion import configcheck, runtime, sharding
from medfusion.classify import kernel
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.diffusion import schedules
from medfusion.errors import ConfigError
from medfusion.models import make_denoiser, wavelet
from medfusion.training import diffusion_trainer
from medfusion.training import state as state_lib

TINY = {"dit": ("smoke,model=dit", False), "wavelet_unet": ("smoke", True)}


@functools.cache
def tiny(name: str):
  """(config, model, optimizer, mesh, fresh train state) of a tiny model of TINY on 16x16 images; built once."""
  arg, wavelet_input = TINY[name]
  config = default.get_config(arg)
  config.data.image_size = 16
  config.model.wavelet = wavelet_input
  if config.model.type == "unet":
    config.model.update(channels=8, channel_mult=(1,), attention_resolutions=(), norm_groups=4)
  else:
    config.model.update(patch_size=2, depth=1, hidden_size=16, dropout=0.1)
  config.classify.update(num_draws=2, batch_size=2, chunk_size=4)
  config.train.batch_size = 4
  configcheck.check(config)
  model, optimizer, mesh = state_lib.make_model(config), state_lib.make_optimizer(config.train), sharding.make_mesh()
  state = runtime.run_once(lambda: state_lib.init_state(config, model, optimizer), sharding.replicated(mesh))
  return config, model, optimizer, mesh, state


def perturbed(params):
  """Parameters plus noise, so the zero-initialised output layers do not hide the classes."""
  rng = np.random.default_rng(0)  # host-side noise: jax.random per leaf would compile
  return jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.standard_normal(p.shape, np.float32), params)


def parameter_count(config) -> int:
  shapes = jax.eval_shape(lambda: state_lib.init_params(config, state_lib.make_model(config)))
  return sum(x.size for x in jax.tree.leaves(shapes))


def test_haar_is_orthonormal_and_exactly_invertible():
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
  y = wavelet.haar(x)
  assert y.shape == (2, 4, 3, 12)
  np.testing.assert_allclose(wavelet.inverse_haar(y), x, atol=1e-6)
  np.testing.assert_allclose(jnp.sum(y**2, axis=(1, 2, 3)), jnp.sum(x**2, axis=(1, 2, 3)), rtol=1e-6)
  flat = wavelet.haar(jnp.full((1, 2, 2, 1), 3.0))  # a constant image has only the LL band, its 2x2 mean * 2
  np.testing.assert_allclose(flat.reshape(-1), [6.0, 0.0, 0.0, 0.0])


def test_wavelet_wrapper_errors_equal_wavelet_space_errors():
  """Diffusing pixels then transforming is diffusing the transform, and MSE errors are the same in both spaces."""
  _, model, _, _, state = tiny("wavelet_unet")
  params = perturbed(state.params)
  rng = np.random.default_rng(1)  # host-side draws: jax.random outside jit compiles each function
  x = rng.uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  eps = rng.standard_normal(x.shape, np.float32)
  logsnr, labels = jnp.array([-3.0, 0.0, 4.0]), jnp.array([0, 1, 2])
  z = schedules.diffuse(x, eps, logsnr)
  np.testing.assert_allclose(wavelet.haar(z), schedules.diffuse(wavelet.haar(x), wavelet.haar(eps), logsnr), atol=1e-6)
  pixel_out = jax.jit(model.apply)({"params": params}, z, logsnr, labels)
  inner_out = jax.jit(model.inner.apply)({"params": params["inner"]}, wavelet.haar(z), logsnr, labels)
  for prediction in ("v", "eps"):
    for kind in ("eps_mse", "x_mse", "v_mse"):
      in_pixels = kernel.pair_error(kind, pixel_out, x, eps, z, logsnr, prediction)
      in_wavelets = kernel.pair_error(
        kind, inner_out, wavelet.haar(x), wavelet.haar(eps), wavelet.haar(z), logsnr, prediction
      )
      np.testing.assert_allclose(in_pixels, in_wavelets, rtol=1e-5, err_msg=f"{kind}, {prediction}-prediction")


def test_dit_starts_at_zero_and_returns_float32():
  config, _, _, _, state = tiny("dit")
  params, noisy = state.params, perturbed(state.params)
  z = np.random.default_rng(2).standard_normal((2, 16, 16, 1), np.float32)
  logsnr, labels = jnp.array([-1.0, 2.0]), jnp.array([0, 2])
  for dtype in ("float32", "bfloat16"):
    apply = jax.jit(make_denoiser(config, dtype).apply)
    out = apply({"params": params}, z, logsnr, labels)
    assert out.shape == z.shape and out.dtype == jnp.float32
    assert not np.any(out)  # adaLN-Zero: gated blocks and a zero output layer
    first, null = (apply({"params": noisy}, z, logsnr, jnp.full((2,), y)) for y in (0, 2))
    assert np.all(np.isfinite(first)) and np.any(first != null), dtype


def test_paper_scale_parameter_counts_built_abstractly():
  config = default.get_config("model=dit")
  config.data.num_channels = 3
  config.model.wavelet = False
  configcheck.check(config)
  assert parameter_count(config) == 129_586_224  # DiT-B/4 on 256x256 RGB (learn-sigma-free DiT-B/4: 130 M)
  config.model.wavelet = True
  assert parameter_count(config) == 129_807_552  # on the 128x128x12 wavelet input
  config = default.get_config("model=original_unet")
  config.data.num_channels = 3
  configcheck.check(config)
  assert parameter_count(config) == 249_850_636  # the original reports ~276 M for its variant of this UNet


def test_model_sections_hold_only_their_type_fields():
  dit, unet = default.get_config("model=dit").model, default.get_config("model=original_unet").model
  assert "channels" not in dit and "patch_size" not in unet and unet.wavelet
  smoke = default.get_config("smoke,model=dit")
  configcheck.check(smoke)
  assert smoke.model.type == "dit" and smoke.model.hidden_size == 32  # smoke shrinks whatever type it gets


@pytest.mark.parametrize(
  ("field", "value", "fragment"),
  [
    ("patch_size", 5, r"config.model.patch_size=5 must divide config.data.image_size=16 \(with config.model.wavelet"),
    ("hidden_size", 30, "config.model.hidden_size=30 must be divisible by 4"),
    ("num_heads", 3, "config.model.hidden_size=32 must be divisible by config.model.num_heads=3"),
    ("depth", 0, "config.model.depth=0 must be positive"),
    ("mlp_ratio", 0.0, "config.model.mlp_ratio"),
    ("dropout", 1.0, "config.model.dropout"),
    ("dtype", "float16", "config.model.dtype"),
  ],
)
def test_bad_dit_fields_fail_in_one_line_naming_the_field(field, value, fragment):
  config = default.get_config("smoke,model=dit")
  config.model[field] = value
  with pytest.raises(ConfigError, match=fragment) as error:
    configcheck.check(config)
  assert "\n" not in str(error.value)


def test_wavelet_input_needs_an_image_size_its_network_accepts():
  config = default.get_config("smoke")
  config.model.wavelet = True
  config.data.image_size = 31
  with pytest.raises(ConfigError, match="image_size=31 must be even"):
    configcheck.check(config)
  config.data.image_size = 30  # the two-level smoke UNet gets 15x15
  with pytest.raises(ConfigError, match="the network sees half the image size"):
    configcheck.check(config)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_models_score_and_train_unmodified(name):
  config, model, optimizer, mesh, state = tiny(name)
  images = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  tally = DiffusionClassifier(config, perturbed(state.ema_params)).score(images, np.arange(3))
  assert np.all(np.isfinite(tally.mean_errors)) and np.all(tally.draws == config.classify.num_draws)

  step = diffusion_trainer.make_train_step(config, model, optimizer, mesh)
  state = jax.tree.map(jnp.copy, state)  # the step donates its input; the cached state is shared
  batch = {"image": np.resize(images, (4, 16, 16, 1)), "label": np.array([0, 1, 0, 1], np.int32)}
  for _ in range(2):
    state, metrics = step(state, sharding.to_global(mesh, batch))
    assert np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 2
