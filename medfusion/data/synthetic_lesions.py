"""TFDS builder `synthetic_lesions`: procedural chest-X-ray-like images, half of them with a lesion.

A controlled two-class task with a known answer: class 1 ('lesion') carries a bright, roughly elliptical
opacity inside a lung field, and its binary mask is stored with the image so explanations (saliency,
counterfactual difference maps) can be scored against the truth. Class 0 ('healthy') has an all-zero
mask. Every image is a pure function of (split, index, variant), so builds are reproducible everywhere.

The `hard` variant (builder configs `hard`, `hard_smoke`) takes brightness away as a give-away, so a bright-spot
detector cannot find its lesions: every image, healthy or not, carries bright dots (vessels seen end-on), and its
lesions come in four kinds, cycling with the index: the same mean intensity as their surroundings (a bright rim
around a dark core), darker than the lung, a texture of fine stripes (zero mean), and bright but right beside the
heart or spine.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ("healthy", "lesion")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SEED = 20240601
VARIANTS = ("default", "hard")
HARD_KINDS = ("same_mean", "dark", "texture", "beside_anatomy")


def hard_kind(index: int) -> str:
  """The lesion kind of image `index` of the hard variant (lesion images are the odd ones; kinds take turns)."""
  return HARD_KINDS[(int(index) // 2) % len(HARD_KINDS)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _ellipse(x, y, cx, cy, a, b, theta):
  """Elliptic distance (1 on the boundary) from a rotated ellipse's centre."""
  u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
  v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
  return np.hypot(u / a, v / b)


def _hard_lesion(rng, kind: str, distance, x, y, theta):
  """The intensity change of one `hard` lesion of `kind` (distance: its elliptic distance map)."""
  inside = _sigmoid((1.0 - distance) / 0.2)
  if kind == "same_mean":  # bright rim, dark core, the mean change over the lesion removed
    ring = _sigmoid((distance - 0.55) / 0.08) * inside
    change = 0.35 * ring - 0.35 * inside * (1 - ring)
    hard_mask = distance <= 1.0
    return change - inside * change[hard_mask].sum() / max(inside[hard_mask].sum(), 1e-9)
  if kind == "dark":
    return -rng.uniform(0.3, 0.4) * inside
  if kind == "texture":  # stripes about 2 pixels apart at 32 px, zero mean
    u = x * np.cos(theta) + y * np.sin(theta)
    return 0.3 * np.sin(2 * np.pi * u * x.shape[0] / 4.0) * inside
  return rng.uniform(0.15, 0.2) * inside  # beside_anatomy: bright (less than the dots), placed by the caller


def render(split: str, index: int, size: int, variant: str = "default") -> tuple[np.ndarray, np.ndarray, int]:
  """Draws example `index` of `split`: (image uint8 [S, S, 1], mask uint8 [S, S, 1], label)."""
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
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
  if variant == "hard":
    image, mask = _hard_variant(rng, image, x, y, thorax, centres, label, index)
  elif label:
    # A rotated ellipse, a few pixels across, centred well inside one lung.
    cx, cy, rx, ry = centres[rng.integers(2)]
    angle, radius = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.35))
    cx, cy = cx + radius * rx * np.cos(angle), cy + radius * ry * np.sin(angle)
    a, b, theta = rng.uniform(0.14, 0.22), rng.uniform(0.1, 0.16), rng.uniform(0, np.pi)
    distance = _ellipse(x, y, cx, cy, a, b, theta)
    image += rng.uniform(0.4, 0.5) * _sigmoid((1.0 - distance) / 0.2)
    mask = (distance <= 1.0).astype(np.uint8)

  pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
  return pixels[..., None], mask[..., None], label


def _hard_variant(rng, image, x, y, thorax, centres, label: int, index: int):
  """The `hard` variant's bright dots (every image) and lesion (lesion images): (image, mask)."""
  lesion_rng = np.random.default_rng([_SEED, 99, index])  # separate stream: the dots do not move the lesion
  for _ in range(int(rng.integers(3, 6))):  # vessels seen end-on: bright dots 2-3 pixels across, in the lungs
    cx, cy, rx, ry = centres[rng.integers(2)]
    angle, radius = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.6))
    px, py = cx + radius * rx * np.cos(angle), cy + radius * ry * np.sin(angle)
    image = image + rng.uniform(0.45, 0.6) * np.exp(-((np.hypot(x - px, y - py) / 0.07) ** 2)) * thorax
  mask = np.zeros(x.shape, np.uint8)
  if not label:
    return image, mask
  kind = hard_kind(index)
  cx, cy, rx, ry = centres[lesion_rng.integers(2)]
  if kind == "beside_anatomy":  # on the lung's inner edge, next to the spine and heart
    cx, cy = cx - np.sign(cx) * 0.8 * rx, cy + lesion_rng.uniform(0.0, 0.5) * ry
  else:
    angle, radius = lesion_rng.uniform(0, 2 * np.pi), np.sqrt(lesion_rng.uniform(0, 0.35))
    cx, cy = cx + radius * rx * np.cos(angle), cy + radius * ry * np.sin(angle)
  a, b, theta = lesion_rng.uniform(0.18, 0.26), lesion_rng.uniform(0.14, 0.2), lesion_rng.uniform(0, np.pi)
  distance = _ellipse(x, y, cx, cy, a, b, theta)
  image = image + _hard_lesion(lesion_rng, kind, distance, x, y, theta)
  return image, (distance <= 1.0).astype(np.uint8)


@dataclasses.dataclass
class SyntheticLesionsConfig(tfds.core.BuilderConfig):
  """Image size and number of examples per split."""

  image_size: int = 32
  num_train: int = 2000
  num_val: int = 256
  num_test: int = 256
  variant: str = "default"


class SyntheticLesions(tfds.core.GeneratorBasedBuilder):
  """Procedural X-ray-like images with features image, label, mask (lesion pixels) and index."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    SyntheticLesionsConfig(name="default", description="32x32, 2000/256/256 train/val/test."),
    SyntheticLesionsConfig(
      name="smoke", description="32x32, 256/64/64 train/val/test.", num_train=256, num_val=64, num_test=64
    ),
    SyntheticLesionsConfig(name="hard", description="The hard variant, 32x32, 2000/256/256.", variant="hard"),
    SyntheticLesionsConfig(
      name="hard_smoke",
      description="The hard variant, 32x32, 256/64/64.",
      num_train=256,
      num_val=64,
      num_test=64,
      variant="hard",
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
      image, mask, label = render(split, index, self.builder_config.image_size, self.builder_config.variant)
      yield index, {"image": image, "label": label, "mask": mask, "index": index}
