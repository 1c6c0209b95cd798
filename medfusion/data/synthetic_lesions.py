"""TFDS builder `synthetic_lesions`: procedural chest-X-ray-like images, half of them with a lesion.

A controlled two-class task with a known answer: class 1 ('lesion') carries a bright, roughly elliptical
opacity inside a lung field, and its binary mask is stored with the image so explanations (saliency,
counterfactual difference maps) can be scored against the truth. Class 0 ('healthy') has an all-zero
mask. Every image is a pure function of (split, index), so builds are reproducible everywhere.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ("healthy", "lesion")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SEED = 20240601


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def render(split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Draws example `index` of `split`: (image uint8 [S, S, 1], mask uint8 [S, S, 1], label)."""
  rng = np.random.default_rng([_SEED, _SPLIT_IDS[split], index])
  label = index % 2  # Alternating labels: every split and every prefix of it is balanced.
  y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
  edge = 4.0 / size  # Soft edges about one pixel wide at any resolution.

  # Body: soft tissue inside a rounded thorax, dark air outside.
  thorax = _sigmoid((1.0 - np.hypot(x / rng.uniform(0.85, 0.95), y / 1.15)) / edge)
  image = 0.08 + 0.5 * thorax
  # Lung fields: two dark ellipses, jittered in position and size.
  lungs = np.zeros_like(x)
  centres = []
  for side in (-1.0, 1.0):
    cx, cy = side * rng.uniform(0.36, 0.46), rng.uniform(-0.15, 0.0)
    rx, ry = rng.uniform(0.24, 0.32), rng.uniform(0.5, 0.62)
    centres.append((cx, cy, rx, ry))
    lungs = np.maximum(lungs, _sigmoid((1.0 - np.hypot((x - cx) / rx, (y - cy) / ry)) / (edge * 2)))
  image -= 0.3 * lungs * thorax
  # Ribs: curved bright stripes over the chest, strongest over the lungs.
  frequency, phase, bend = rng.uniform(2.6, 3.4), rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.5)
  ribs = np.clip(np.cos(2 * np.pi * frequency * (y + bend * x**2) + phase) - 0.4, 0, None) / 0.6
  image += 0.14 * ribs * thorax
  # Spine and heart: a bright central band and a bright blob low on the left.
  image += 0.18 * _sigmoid((0.12 - np.abs(x - rng.uniform(-0.03, 0.03))) / edge) * thorax
  heart = np.hypot((x + rng.uniform(0.05, 0.15)) / 0.3, (y - rng.uniform(0.25, 0.35)) / 0.25)
  image += 0.12 * _sigmoid((1.0 - heart) / (edge * 2)) * thorax
  # Smooth exposure variation and sensor noise.
  for _ in range(3):
    kx, ky = rng.normal(0, 1.5, size=2)
    image += 0.025 * np.cos(kx * x + ky * y + rng.uniform(0, 2 * np.pi))
  image += rng.normal(0, 0.025, size=image.shape)

  mask = np.zeros((size, size), np.uint8)
  if label:
    # A rotated ellipse, a few pixels across, centred well inside one lung.
    cx, cy, rx, ry = centres[rng.integers(2)]
    angle, radius = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.35))
    cx, cy = cx + radius * rx * np.cos(angle), cy + radius * ry * np.sin(angle)
    a, b, theta = rng.uniform(0.14, 0.22), rng.uniform(0.1, 0.16), rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
    v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
    distance = np.hypot(u / a, v / b)
    image += rng.uniform(0.4, 0.5) * _sigmoid((1.0 - distance) / 0.2)
    mask = (distance <= 1.0).astype(np.uint8)

  pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
  return pixels[..., None], mask[..., None], label


@dataclasses.dataclass
class SyntheticLesionsConfig(tfds.core.BuilderConfig):
  """Image size and number of examples per split."""

  image_size: int = 32
  num_train: int = 2000
  num_val: int = 256
  num_test: int = 256


class SyntheticLesions(tfds.core.GeneratorBasedBuilder):
  """Procedural X-ray-like images with features image, label, mask (lesion pixels) and index."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    SyntheticLesionsConfig(name="default", description="32x32, 2000/256/256 train/val/test."),
    SyntheticLesionsConfig(
      name="smoke", description="32x32, 256/64/64 train/val/test.", num_train=256, num_val=64, num_test=64
    ),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    shape = (self.builder_config.image_size, self.builder_config.image_size, 1)
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=shape),
          "label": tfds.features.ClassLabel(names=CLASS_NAMES),
          "mask": tfds.features.Image(shape=shape),
          "index": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    sizes = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, num_examples: int):
    for index in range(num_examples):
      image, mask, label = render(split, index, self.builder_config.image_size)
      yield index, {"image": image, "label": label, "mask": mask, "index": index}
