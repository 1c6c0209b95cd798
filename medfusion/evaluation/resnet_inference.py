"""ResNet inference: the one jitted predict step and the batching around it.

The ResNet trainer (its final metrics), the `classification` evaluator, batch scoring of a ResNet workdir and the
explanations' judge all call these, so they see the same probabilities.
"""

import jax
import numpy as np

from medfusion import sharding
from medfusion.data import pipeline
from medfusion.models.resnet import ResNet, ResNetConfig


def make_predict_step(config, mesh):
  """The jitted ResNet inference step: (variables, images) -> softmax probabilities, replicated to every process."""
  model = ResNet(ResNetConfig.from_config(config))

  def predict_step(variables, images):
    return jax.nn.softmax(model.apply(variables, images))

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(predict_step, in_shardings=(rep, data), out_shardings=rep)


def _probabilities(predict_step, variables, images, valid, mesh) -> np.ndarray:
  """Probabilities of the `valid` rows of one padded batch of float images."""
  global_images = sharding.shared_to_global(mesh, {"image": images})["image"]
  return np.asarray(jax.device_get(predict_step(variables, global_images)))[valid]


def predict(predict_step, variables, split: pipeline.Split, batch_size: int, mesh, stop: int | None = None):
  """Softmax probabilities [N, C] of the first `stop` examples of `split` (all when None)."""
  probs = [
    _probabilities(predict_step, variables, batch["image"], batch["valid"], mesh)
    for batch in pipeline.eval_batches(split, batch_size, 0, stop)
  ]
  return np.concatenate(probs)


def predict_images(predict_step, variables, images, batch_size: int, mesh, num_classes: int) -> np.ndarray:
  """Softmax probabilities [N, C] of float images [N, H, W, C] in [-1, 1], in batches padded to `batch_size`."""
  images = np.asarray(images, np.float32)
  probs = []
  for lo in range(0, len(images), batch_size):
    batch = images[lo : lo + batch_size]
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), np.float32)])
    probs.append(_probabilities(predict_step, variables, padded, np.arange(batch_size) < len(batch), mesh))
  return np.concatenate(probs) if probs else np.zeros((0, num_classes), np.float32)
