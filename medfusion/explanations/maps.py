"""Explanation maps [H, W] in [0, 1]: where an image carries the evidence for its class.

Each map explains the decision between the predicted class p and a contrast class c' (`contrast_classes`: the
runner-up by mean error, the other class when there are two):
- `counterfactual_difference`: |x - x_cf(c')|, what the denoiser changes to turn x into class c'.
- `error_difference`: |E_c' - E_p| per pixel, the difference of the two classes' denoising errors averaged over the
  classification draws (`medfusion.classify.kernel.local_pixel_errors`).
- Baselines: `intensity` (the naive map: bright pixels), and for the ResNet-18 baseline `grad_cam` (of its last
  stage) and `input_gradient` (|d logit / d x|, Simonyan et al. 2014).

Difference maps and input gradients are smoothed with a Gaussian of `config.explain.smoothing_sigma` pixels
(scipy.ndimage.gaussian_filter), then min-max normalised per image; a constant map becomes all zeros.
"""

import functools

import flax.linen as nn
import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from medfusion import sharding
from medfusion.classify import kernel
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.models import make_denoiser
from medfusion.models.resnet import BasicBlock


def normalise(values) -> np.ndarray:
  """Min-max scaling of one map to [0, 1]; a constant (or non-finite) map becomes zeros."""
  values = np.asarray(values, np.float64)
  lo, hi = values.min(), values.max()
  if not np.isfinite(hi - lo) or hi - lo <= 0:
    return np.zeros(values.shape, np.float32)
  return ((values - lo) / (hi - lo)).astype(np.float32)


def smooth(values, sigma: float) -> np.ndarray:
  """A Gaussian blur of one map [H, W] with `sigma` pixels (edges repeat the border); sigma 0 returns it unchanged."""
  values = np.asarray(values, np.float64)
  return ndimage.gaussian_filter(values, sigma, mode="nearest") if sigma > 0 else values


def contrast_classes(mean_errors: np.ndarray, predicted: np.ndarray) -> np.ndarray:
  """The class each map contrasts with the prediction: the lowest mean error among the other classes [N]."""
  masked = np.asarray(mean_errors, np.float64).copy()
  masked[np.arange(len(predicted)), predicted] = np.inf
  return np.argmin(masked, axis=1)


def counterfactual_difference(image, counterfactual, sigma: float) -> np.ndarray:
  """|x - x_cf| averaged over channels, smoothed and normalised: [H, W] from two [H, W, C] images."""
  difference = np.abs(np.asarray(image, np.float64) - np.asarray(counterfactual, np.float64)).mean(axis=-1)
  return normalise(smooth(difference, sigma))


def error_difference(pixel_errors, predicted: int, contrast: int, sigma: float) -> np.ndarray:
  """|E_contrast - E_predicted| of one image's per-class pixel errors [C, H, W], smoothed and normalised."""
  pixel_errors = np.asarray(pixel_errors, np.float64)
  return normalise(smooth(np.abs(pixel_errors[contrast] - pixel_errors[predicted]), sigma))


def class_pixel_errors(classifier: DiffusionClassifier, images: np.ndarray, indices: np.ndarray, progress=None):
  """(errors [N, C, K], pixel_errors [N, C, H, W]) of every class on the K draws of config.classify: the errors
  are those of `classifier.draw_errors` (the same draws, from the same evaluations), the pixel errors their
  per-pixel means over the draws (`kernel.local_pixel_errors`)."""
  spec, config = classifier.spec, classifier.config
  model = make_denoiser(config, spec.dtype, 0.0)
  fn = kernel.make_pixel_error_kernel(model, classifier.kernel_spec, classifier.mesh)
  b, c, k = spec.batch_size, classifier.num_classes, spec.num_draws
  classes, draw_ids = np.broadcast_to(np.arange(c), (b, c)), np.broadcast_to(np.arange(k), (b, k))
  errors, pixels = [], []
  for lo in range(0, len(images), b):
    rows = slice(lo, min(lo + b, len(images)))
    n = rows.stop - rows.start
    padded = classifier.pad(images[rows], indices[rows], draw_ids[:n], classes[:n])
    arrays = dict(zip(("images", "indices", "draw_ids", "class_ids"), padded, strict=True))
    g = sharding.shared_to_global(classifier.mesh, arrays)
    out = fn(classifier.params, g["images"], g["indices"], g["draw_ids"], g["class_ids"])
    e, p = (
      np.asarray(jax.device_get(jax.experimental.multihost_utils.process_allgather(a, tiled=True)))[:n] for a in out
    )
    errors.append(e)
    pixels.append(p)
    if progress is not None:
      progress(n)
  if not errors:
    return np.zeros((0, c, k)), np.zeros((0, c, *images.shape[1:3]))
  return np.concatenate(errors), np.concatenate(pixels)


def intensity(image) -> np.ndarray:
  """The naive baseline: the image's own brightness (mean over channels), normalised."""
  return normalise(np.asarray(image, np.float64).mean(axis=-1))


def _last_block(model: nn.Module, variables, images) -> tuple[str, tuple[int, ...]]:
  """(name, output shape) of the last BasicBlock the network calls: the output of its last stage."""
  _, state = jax.eval_shape(
    functools.partial(
      model.apply,
      capture_intermediates=lambda module, method: isinstance(module, BasicBlock) and method == "__call__",
      mutable=["intermediates"],
    ),
    variables,
    images,
  )
  calls = state["intermediates"]
  if not calls:
    raise ValueError(f"{type(model).__name__} has no BasicBlock: Grad-CAM needs a ResNet")
  name = list(calls)[-1]
  return name, tuple(calls[name]["__call__"][0].shape)


@functools.lru_cache(maxsize=4)
def _saliency_fns(model: nn.Module):
  """Jitted (grad_cam, input_gradient) of one ResNet: (variables, images, targets[, block, shape]) -> [B, H, W]."""

  def grad_cam(variables, images, targets, block: str, shape: tuple[int, ...]):
    def target_logits(delta):
      features = {}

      def add_delta(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name == block:
          out = out + delta
          features["a"] = out
        return out

      with nn.intercept_methods(add_delta):
        logits = model.apply(variables, images)
      return jnp.sum(logits[jnp.arange(len(targets)), targets]), features["a"]

    gradients, features = jax.grad(target_logits, has_aux=True)(jnp.zeros(shape, jnp.float32))
    weights = jnp.mean(gradients, axis=(1, 2))  # [B, K]: the gradient averaged over the feature map
    cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", features.astype(jnp.float32), weights))
    return jax.image.resize(cam, (images.shape[0], *images.shape[1:3]), method="bilinear")

  def input_gradient(variables, images, targets):
    def target_logits(x):
      return jnp.sum(model.apply(variables, x)[jnp.arange(len(targets)), targets])

    return jnp.max(jnp.abs(jax.grad(target_logits)(images)), axis=-1)

  return jax.jit(grad_cam, static_argnames=("block", "shape")), jax.jit(input_gradient)


def grad_cam(model: nn.Module, variables, images, targets) -> np.ndarray:
  """Grad-CAM (Selvaraju et al. 2017) of the ResNet's last stage for classes targets [B]: relu(sum_k w_k A_k) with
  w_k the mean gradient of the target logit over feature map A_k, bilinearly upsampled and normalised: [B, H, W]."""
  images = jnp.asarray(images, jnp.float32)
  fn, _ = _saliency_fns(model)
  block, shape = _last_block(model, variables, images)
  maps = np.asarray(fn(variables, images, jnp.asarray(targets, jnp.int32), block=block, shape=shape))
  return np.stack([normalise(m) for m in maps])


def input_gradient(model: nn.Module, variables, images, targets, sigma: float) -> np.ndarray:
  """|d logit_target / d x| (max over channels), smoothed and normalised: [B, H, W]."""
  _, fn = _saliency_fns(model)
  maps = np.asarray(fn(variables, jnp.asarray(images, jnp.float32), jnp.asarray(targets, jnp.int32)))
  return np.stack([normalise(smooth(m, sigma)) for m in maps])
