"""Training augmentation (config.data.augment): label-preserving flips and turns of the square, small affine
transforms, intensity jitter and MedMNIST-C corruptions, each drawn from (seed, position in the training stream) so
a resumed or resharded run augments exactly as an uninterrupted one. Pure functions of uint8 arrays."""

import dataclasses

import numpy as np

from medfusion.errors import ConfigError

# Label-preserving training augmentations (config.data.augment): none; flips (each image flipped left-right and
# up-down, each with probability 1/2); flips_rot90 (also transposed with probability 1/2: a uniform draw from the
# 8 flips and 90-degree rotations of the square, right for dermoscopy where orientation carries no meaning).
AUGMENTATIONS = ("none", "flips", "flips_rot90")
# Further terms, joined to one of those (or alone) with '+', e.g. 'flips+affine+intensity+corrupt:noise,blur':
# affine (every image rotated by up to 10 degrees, scaled by 0.9-1.1 and shifted by up to 2 pixels, bilinear, zero
# fill), intensity (every image's contrast about its mean and then its brightness each times 0.9-1.1) and corrupt
# (half the images get one MedMNIST-C corruption at a severity drawn from 1..5, from the families after the colon,
# default all: corruptions.FAMILIES; the dataset's set by channels: greyscale PneumoniaMNIST's, RGB DermaMNIST's;
# applied to the model-resolution image under corruptions.PROTOCOL, up to 224 and back).
AUGMENT_TERMS = ("affine", "intensity", "corrupt")
AFFINE_DEGREES, AFFINE_SCALE, AFFINE_SHIFT = 10.0, 0.1, 2.0
INTENSITY_JITTER = 0.1
CORRUPT_PROBABILITY = 0.5


@dataclasses.dataclass(frozen=True)
class Augment:
  """config.data.augment parsed: the flips term and the further terms (`AUGMENT_TERMS`)."""

  flips: str = "none"
  affine: bool = False
  intensity: bool = False
  corrupt: tuple[str, ...] = ()  # MedMNIST-C families; empty: no corruptions

  @property
  def extras(self) -> bool:
    return self.affine or self.intensity or bool(self.corrupt)


def parse(augment: str) -> Augment:
  """config.data.augment ('none', 'flips', 'flips_rot90', optionally '+'-joined with 'affine', 'intensity',
  'corrupt[:family,family]') as an Augment; ConfigError naming the bad term."""
  from medfusion.data import corruptions

  where = f"config.data.augment={augment!r}"
  fields, flips = {}, []
  for term in [t.strip() for t in str(augment).split("+")]:
    name, _, families = term.partition(":")
    if name in AUGMENTATIONS:
      flips.append(name)
    elif name in AUGMENT_TERMS and name not in fields and (name == "corrupt" or not families):
      chosen = tuple(f.strip() for f in families.split(",") if f.strip()) or tuple(corruptions.FAMILIES)
      unknown = [f for f in chosen if f not in corruptions.FAMILIES]
      if name == "corrupt" and unknown:
        raise ConfigError(f"{where}: unknown corruption families {unknown}; choose from {tuple(corruptions.FAMILIES)}")
      fields[name] = chosen if name == "corrupt" else True
    else:
      raise ConfigError(
        f"{where}: bad term {term!r}; expected one of {AUGMENTATIONS} and/or {AUGMENT_TERMS} joined with '+' "
        "(each once; 'corrupt:noise,blur' picks families)"
      )
  if len(flips) > 1:
    raise ConfigError(f"{where}: give at most one of {AUGMENTATIONS}")
  return Augment(flips[0] if flips else "none", **fields)


def flip_draws(num_examples: int, seed: int, epoch: int, augment: str) -> np.ndarray:
  """Per position of epoch `epoch`, which of the `augment` flips it gets (see `apply_flips`): a pure
  function of (seed, epoch), like `pipeline.epoch_order`, so a resumed run augments exactly as an uninterrupted one."""
  flips = parse(augment).flips
  if flips == "none":
    return np.zeros(num_examples, np.int64)
  return np.random.default_rng((seed, epoch, 1)).integers(0, 4 if flips == "flips" else 8, num_examples)


def apply_flips(images: np.ndarray, draws: np.ndarray) -> np.ndarray:
  """Transforms square images [N, S, S, C] by draw: bit 0 flips left-right, bit 1 up-down, bit 2 transposes."""
  out = images.copy()
  for draw in np.unique(draws):
    rows = draws == draw
    group = images[rows]
    if draw & 4:
      group = group.transpose(0, 2, 1, 3)
    if draw & 1:
      group = group[:, :, ::-1]
    if draw & 2:
      group = group[:, ::-1]
    out[rows] = group
  return out


def _affine(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A random small rotation, scaling and shift about the centre (bilinear, zero fill) of one uint8 [S, S, C]."""
  import scipy.ndimage

  angle = np.deg2rad(rng.uniform(-AFFINE_DEGREES, AFFINE_DEGREES))
  scale = rng.uniform(1 - AFFINE_SCALE, 1 + AFFINE_SCALE)
  shift = rng.uniform(-AFFINE_SHIFT, AFFINE_SHIFT, 2)
  inverse = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) / scale
  centre = (np.array(image.shape[:2]) - 1) / 2
  offset = centre - inverse @ (centre + shift)
  out = np.stack(
    [
      scipy.ndimage.affine_transform(image[..., c].astype(np.float32), inverse, offset, order=1, cval=0.0)
      for c in range(image.shape[2])
    ],
    axis=-1,
  )
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Contrast about the image's mean, then brightness, each scaled by a factor in 1 +- INTENSITY_JITTER."""
  contrast, brightness = rng.uniform(1 - INTENSITY_JITTER, 1 + INTENSITY_JITTER, 2)
  x = image.astype(np.float32)
  x = (x.mean() + contrast * (x - x.mean())) * brightness
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def apply_extras(images: np.ndarray, positions: np.ndarray, seed: int, augment: Augment) -> np.ndarray:
  """The affine, intensity and corruption terms of `augment` on uint8 images [N, S, S, C], image i drawn from
  (seed, positions[i]): its position in the endless training stream, so a resumed or resharded run draws the same."""
  from medfusion.data import corruptions

  dataset = "pneumoniamnist" if images.shape[-1] == 1 else "dermamnist"
  names = [
    c for family in augment.corrupt for c in corruptions.FAMILIES[family] if c in corruptions.PARAMETERS[dataset]
  ]
  out = images.copy()
  for i, position in enumerate(positions):
    rng = np.random.default_rng((seed, int(position), 2))
    if augment.affine:
      out[i] = _affine(out[i], rng)
    if augment.intensity:
      out[i] = _intensity(out[i], rng)
    if names and rng.uniform() < CORRUPT_PROBABILITY:
      corruption = corruptions.Corruption(dataset, names[rng.integers(len(names))], int(rng.integers(1, 6)))
      out[i] = corruptions.corrupt(out[i], corruption, seed, int(position))
  return out
