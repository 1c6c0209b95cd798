"""The independent judge of counterfactuals: a ResNet-18 trained on the same data (`configs/*_resnet.py`).

`Judge(workdir, class_names)` restores the best checkpoint of a ResNet workdir with the config it was trained with
(its config.json) and gives class probabilities and the ResNet baseline maps (`saliency.py`: Grad-CAM at any block,
input gradients, SmoothGrad, integrated gradients).
"""

import logging
import os

import numpy as np

from medfusion import modeldir, models, sharding, stored_config
from medfusion.errors import UserError
from medfusion.evaluation import resnet_inference
from medfusion.explanations import saliency
from medfusion.models.resnet import ResNet, ResNetConfig

log = logging.getLogger("medfusion")


class Judge:
  """A trained ResNet classifier: `probabilities`, `grad_cam` and `gradient_map` of float images in [-1, 1]."""

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
    num_classes = self.model.config.num_classes
    return resnet_inference.predict_images(
      self.predict_step, self.variables, images, self.batch_size, self.mesh, num_classes
    )

  @property
  def layers(self) -> list[str]:
    """The names of the blocks Grad-CAM can be taken at, in call order ("stage1.1", ...)."""
    return saliency.layer_names(self.model.config.stage_sizes)

  def feature_sizes(self, images) -> dict[str, int]:
    """The side of each block's feature map for images like `images`."""
    return saliency.feature_sizes(self.model, self.variables, images)

  def grad_cams(self, images, targets) -> dict[str, np.ndarray]:
    """Grad-CAM maps [N, H, W] in [0, 1] of classes `targets` at every block, by layer name (saliency.grad_cams)."""
    layers = self.layers
    stacked = _batched(
      lambda x, t: np.stack(list(saliency.grad_cams(self.model, self.variables, x, t).values()), axis=1),
      images,
      targets,
    )
    return {name: stacked[:, i] for i, name in enumerate(layers)}

  def gradient_map(self, images, targets, kind: str, sigma: float) -> np.ndarray:
    """Input-gradient, SmoothGrad or integrated-gradients maps [N, H, W] in [0, 1] (saliency.gradient_map)."""
    return _batched(lambda x, t: saliency.gradient_map(self.model, self.variables, x, t, kind, sigma), images, targets)


BATCH = 32  # images per gradient-map call: bounds memory (SmoothGrad, integrated gradients) and compiled shapes


def _batched(fn, images, targets) -> np.ndarray:
  """fn(images, targets) -> [b, H, W] over batches of BATCH (the last one padded with copies of its last image)."""
  images, targets = np.asarray(images, np.float32), np.asarray(targets)
  out = []
  for lo in range(0, len(images), BATCH):
    x, t = images[lo : lo + BATCH], targets[lo : lo + BATCH]
    pad = BATCH - len(x) if len(images) > BATCH else 0
    out.append(
      fn(np.concatenate([x, np.repeat(x[-1:], pad, 0)]), np.concatenate([t, np.repeat(t[-1:], pad)]))[: len(x)]
    )
  return np.concatenate(out)
