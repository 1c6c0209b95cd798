"""The independent judge of counterfactuals: a ResNet-18 trained on the same data (`configs/*_resnet.py`).

`Judge(workdir, class_names)` restores the best checkpoint of a ResNet workdir with the config it was trained with
(its config.json) and gives class probabilities and the ResNet baseline maps (Grad-CAM, input gradients).
"""

import logging
import os

import jax
import numpy as np

from medfusion import modeldir, models, sharding, stored_config
from medfusion.errors import UserError
from medfusion.evaluation import resnet_inference
from medfusion.explanations import maps
from medfusion.models.resnet import ResNet, ResNetConfig

log = logging.getLogger("medfusion")


class Judge:
  """A trained ResNet classifier: `probabilities`, `grad_cam` and `input_gradient` of float images in [-1, 1]."""

  def __init__(self, workdir: str, class_names, mesh=None):
    if not os.path.isdir(workdir):
      raise UserError(f"--judge {workdir} does not exist")
    try:
      config = stored_config.get_config(workdir)
    except ValueError as e:
      raise UserError(f"--judge: {e}") from None
    if models.model_kind(config) != "resnet":
      raise UserError(
        f"--judge {workdir} holds a diffusion model; give the workdir of a ResNet trained with configs/*_resnet.py"
      )
    if tuple(config.data.class_names) != tuple(class_names):
      raise UserError(
        f"--judge {workdir} classifies {tuple(config.data.class_names)}, the diffusion model {tuple(class_names)}"
      )
    self.mesh = mesh or sharding.make_mesh()
    self.model = ResNet(ResNetConfig.from_config(config))
    loaded = modeldir.load(config, workdir)  # parameters and batch statistics, no optimizer state
    self.variables = loaded.params
    step, which = loaded.step, loaded.which
    self.description = f"ResNet {workdir} (step {int(step)}, {which})"
    self.batch_size = next(e.batch_size for e in config.evals.values() if e.type == "classification")
    sharding.check_batch_size(self.batch_size, f"{workdir}: config.evals batch_size")
    self.predict_step = resnet_inference.make_predict_step(config, self.mesh)
    log.info("Judge: %s", self.description)

  def probabilities(self, images) -> np.ndarray:
    """Softmax probabilities [N, C] of float images [N, H, W, C] in [-1, 1]."""
    images = np.asarray(images, np.float32)
    out = []
    for lo in range(0, len(images), self.batch_size):
      batch = images[lo : lo + self.batch_size]
      padded = np.concatenate([batch, np.zeros((self.batch_size - len(batch), *batch.shape[1:]), np.float32)])
      g = sharding.shared_to_global(self.mesh, {"image": padded})["image"]
      out.append(np.asarray(jax.device_get(self.predict_step(self.variables, g)))[: len(batch)])
    return np.concatenate(out) if out else np.zeros((0, self.model.config.num_classes))

  def grad_cam(self, images, targets) -> np.ndarray:
    """Grad-CAM maps [N, H, W] in [0, 1] of classes `targets` (maps.grad_cam)."""
    return maps.grad_cam(self.model, self.variables, images, targets)

  def input_gradient(self, images, targets, sigma: float) -> np.ndarray:
    """Input-gradient maps [N, H, W] in [0, 1] of classes `targets` (maps.input_gradient)."""
    return maps.input_gradient(self.model, self.variables, images, targets, sigma)
