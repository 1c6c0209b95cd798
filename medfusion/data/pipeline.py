"""The input pipeline: loads a split into memory at the model resolution and batches it.

Splits are small enough (MedMNIST, synthetic lesions, modest image folders) to hold in memory as uint8,
which makes training order a pure function of (seed, step): batch s holds examples s*B .. s*B+B-1 of an
endless stream in which epoch e is a fixed permutation of the split. Resuming at step s, splitting a
batch over processes or changing how many steps run at a time therefore never changes the data seen.

Batching is numpy; TensorFlow (tfds sources, resizing) is imported only where such a split is built or read the
first time (its arrays are then kept beside the build), so a machine without it can work on splits written
elsewhere by medfusion.prepare (source 'arrays').
"""

import collections
import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from medfusion.data import image_folder
from medfusion.data.errors import DataError
from medfusion.errors import ConfigError
from medfusion.writers import write_npz_atomic

_RESIZE_CHUNK = 1024  # images resized per call, bounding the float32 copy
SOURCES = ("npz", "synthetic_lesions", "image_folder", "arrays", "chexpert", "isic")
FITS = ("pad", "resize")
ON_BAD_FILE = ("stop", "skip")
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
# CheXpert's findings other than No Finding: the choices of config.data.chexpert.finding.
CHEXPERT_FINDINGS = (
  "Enlarged Cardiomediastinum",
  "Cardiomegaly",
  "Lung Opacity",
  "Lung Lesion",
  "Edema",
  "Consolidation",
  "Pneumonia",
  "Atelectasis",
  "Pneumothorax",
  "Pleural Effusion",
  "Pleural Other",
  "Fracture",
  "Support Devices",
)
CHEXPERT_UNCERTAIN = ("positive", "negative", "drop")
ISIC_LAYOUTS = ("2020", "2019")


def check_data_config(data_config) -> None:
  """Raises ConfigError for the first invalid field of config.data."""
  fields = (("source", SOURCES), ("fit", FITS), ("on_bad_file", ON_BAD_FILE))
  for field, choices in fields:
    if data_config[field] not in choices:
      raise ConfigError(f"config.data.{field}={data_config[field]!r} is not one of {choices}")
  parse_augment(data_config.augment)
  for field in ("num_classes", "num_channels", "image_size"):
    if not data_config[field] > 0:
      raise ConfigError(f"config.data.{field}={data_config[field]!r} must be positive")
  if len(data_config.class_names) != data_config.num_classes:
    raise ConfigError(
      f"config.data.class_names has {len(data_config.class_names)} names but data.num_classes is "
      f"{data_config.num_classes}"
    )
  if data_config.source in ("image_folder", "arrays") and not data_config.folder:
    raise ConfigError(f"config.data.source={data_config.source!r} needs config.data.folder")
  if data_config.source in ("chexpert", "isic"):  # the options of a manually downloaded dataset
    source = data_config.source
    options, prefix = data_config[source], f"config.data.{source}"
    if source == "chexpert":
      choices = (("finding", CHEXPERT_FINDINGS), ("uncertain", CHEXPERT_UNCERTAIN))
      fractions, channels = ("val_fraction",), 1
    else:
      choices, fractions, channels = (("layout", ISIC_LAYOUTS),), ("val_fraction", "test_fraction"), 3
    for field, allowed in choices:
      if options[field] not in allowed:
        raise ConfigError(f"{prefix}.{field}={options[field]!r} is not one of {allowed}")
    if not options.manual_dir:
      raise ConfigError(f"{prefix}.manual_dir is empty; set it to the folder that holds the {source} download")
    for field in fractions:
      if not 0 < options[field] < 1:
        raise ConfigError(f"{prefix}.{field}={options[field]!r} must be between 0 and 1")
    if source == "isic" and options.val_fraction + options.test_fraction >= 1:
      raise ConfigError(f"{prefix}.val_fraction + {prefix}.test_fraction must be below 1 to leave a train split")
    if data_config.num_channels != channels:
      raise ConfigError(f"config.data.num_channels={data_config.num_channels}; {source} images have {channels}")


def _tensorflow():
  """TensorFlow, kept off the accelerators JAX uses (it only reads and resizes data here)."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF has already initialised its devices.
    pass
  return tf


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory at the model resolution."""

  images: np.ndarray  # uint8 [N, S, S, C]
  labels: np.ndarray  # int32 [N]
  masks: np.ndarray | None  # uint8 [N, S, S, 1] lesion masks when the source has them
  skipped: tuple[str, ...] = ()  # unreadable files skipped (image folders with on_bad_file='skip')


def _fit(images: np.ndarray, size: int, fit: str, what: str, nearest: bool = False) -> np.ndarray:
  """Pads (centred, zeros) or resizes (antialiased; nearest for masks) uint8 [N, H, W, C] to [N, S, S, C]."""
  if fit not in FITS:
    raise ValueError(f"config.data.fit={fit!r} is not one of {FITS}")
  height, width = images.shape[1:3]
  if (height, width) == (size, size):
    return images
  if fit == "pad":
    if height > size or width > size:
      raise DataError(
        f"{what}: images are {height}x{width}, larger than config.data.image_size={size}; "
        "set config.data.fit='resize' or a larger image_size"
      )
    top, left = (size - height) // 2, (size - width) // 2
    padding = ((0, 0), (top, size - height - top), (left, size - width - left), (0, 0))
    return np.pad(images, padding)
  method = "nearest" if nearest else "bilinear"
  tf = _tensorflow()
  chunks = [
    tf.image.resize(images[i : i + _RESIZE_CHUNK], (size, size), method=method, antialias=not nearest)
    for i in range(0, len(images), _RESIZE_CHUNK)
  ]
  return np.clip(np.round(np.concatenate(chunks)), 0, 255).astype(np.uint8)


def fit_images(images: np.ndarray, data_config, what: str) -> np.ndarray:
  """uint8 images [N, H, W, C] fitted to the model resolution as a split of `data_config` is (config.data.fit)."""
  return _fit(images, data_config.image_size, data_config.fit, what)


def _load_tfds(builder, split: str, what: str, hint: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Builds the dataset if needed and reads one split into memory, in file order; `what` names the data in errors.

  The first read also keeps the split's arrays beside the build (`<split>.arrays.npz` in the builder's versioned,
  content-named folder), which later reads load without starting TensorFlow (seconds of every command)."""
  kept = os.path.join(builder.data_dir, f"{split}.arrays.npz")
  if os.path.exists(kept):
    with np.load(kept) as arrays:
      return arrays["image"], arrays["label"], arrays["mask"] if "mask" in arrays.files else None
  _tensorflow()
  import tensorflow_datasets as tfds

  builder.download_and_prepare()
  if split not in builder.info.splits:
    raise DataError(f"{what}: no split '{split}' (it has {', '.join(sorted(builder.info.splits))}){hint}")
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  order = np.argsort(arrays["index"], kind="stable")
  loaded = {"image": arrays["image"][order], "label": arrays["label"][order].astype(np.int32)}
  if "mask" in arrays:
    loaded["mask"] = arrays["mask"][order]
  try:
    write_npz_atomic(kept, **loaded)
  except OSError:  # a read-only dataset folder: read through TensorFlow every time
    pass
  return loaded["image"], loaded["label"], loaded.get("mask")


def _load_folder(data_config, split: str) -> Split:
  """Reads a split of an image folder, fitting each image size to the model resolution."""
  names = image_folder.find_class_names(data_config.folder, tuple(data_config.class_names))
  folder = image_folder.read_split(data_config.folder, split, data_config.num_channels, names, data_config.on_bad_file)
  images = np.zeros(
    (len(folder.images), data_config.image_size, data_config.image_size, data_config.num_channels), np.uint8
  )
  by_shape = collections.defaultdict(list)
  for i, image in enumerate(folder.images):
    by_shape[image.shape].append(i)
  for indices in by_shape.values():
    group = np.stack([folder.images[i] for i in indices])
    images[indices] = _fit(group, data_config.image_size, data_config.fit, folder.paths[indices[0]])
  return Split(images, folder.labels, None, folder.skipped)


def _load_arrays(data_config, split: str) -> Split:
  """Reads `<folder>/<split>.npz` written by medfusion.prepare: images already at the model resolution."""
  path = f"{data_config.folder}/{split}.npz"
  try:
    arrays = np.load(path)
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e}); write it with python -m medfusion.prepare") from None
  with arrays:
    if not {"images", "labels"} <= set(arrays.files):
      raise DataError(f"{path}: holds {sorted(arrays.files)}; expected the keys 'images' and 'labels'")
    images, labels = arrays["images"], arrays["labels"].astype(np.int32)
    masks = arrays["masks"] if "masks" in arrays.files else None
  expected = (data_config.image_size, data_config.image_size, data_config.num_channels)
  if images.dtype != np.uint8 or images.shape[1:] != expected or len(images) != len(labels):
    raise DataError(
      f"{path}: images are {images.dtype} {images.shape} with {len(labels)} labels; expected uint8 [N, *{expected}]"
      " (config.data.image_size, num_channels) and one label per image"
    )
  return Split(images, labels, masks)


def load_split(data_config, split: str) -> Split:
  """Loads `split` of the source named by `data_config` (config.data), at the model resolution.

  Sources: 'npz' (the MedMNIST-layout file data_config.npz), 'synthetic_lesions' (tfds config
  data_config.synthetic_config), 'image_folder' (data_config.folder), 'arrays' (data_config.folder as
  written by medfusion.prepare; needs no TensorFlow), 'chexpert' and 'isic' (manual downloads, options in
  data_config.chexpert / data_config.isic, images stored at data_config.image_size). tfds sources are built once into
  data_config.tfds_data_dir and read from there afterwards. Raises DataError for bad or missing data.
  """
  source, hint = data_config.source, ""
  if source == "image_folder":
    loaded = _load_folder(data_config, split)
  elif source == "arrays":
    loaded = _load_arrays(data_config, split)
  else:
    skipped = ()  # files a builder of manually downloaded images skipped (on_bad_file='skip')
    if source == "npz":
      from medfusion.data.medmnist import MedmnistNpz

      builder = MedmnistNpz(
        npz_path=data_config.npz, num_classes=data_config.num_classes, data_dir=data_config.tfds_data_dir
      )
      what = data_config.npz
      if split == "test":
        hint = (
          "; the official MedMNIST test splits are not bundled: download the dataset's .npz from medmnist.com and "
          "pass --config.data.npz=/path/to/file.npz"
        )
    elif source == "synthetic_lesions":
      from medfusion.data.synthetic_lesions import SyntheticLesions

      builder = SyntheticLesions(config=data_config.synthetic_config, data_dir=data_config.tfds_data_dir)
      what = f"synthetic_lesions ({data_config.synthetic_config})"
    elif source in ("chexpert", "isic"):  # config.data.<source> holds exactly the builder's options
      if source == "chexpert":
        from medfusion.data.chexpert import ChexpertManual as Builder
      else:
        from medfusion.data.isic import IsicManual as Builder

      options = data_config[source]
      builder = Builder(
        **options.to_dict(),
        image_size=data_config.image_size,
        on_bad_file=data_config.on_bad_file,
        data_dir=data_config.tfds_data_dir,
      )
      what = f"{dict(chexpert='CheXpert', isic='ISIC')[source]} in {options.manual_dir}"
    else:
      raise ValueError(f"config.data.source={source!r} is not one of {SOURCES}")
    images, labels, masks = _load_tfds(builder, split, what, hint)
    if source in ("chexpert", "isic"):
      skipped = builder.skipped(split)
    what = f"{builder.info.full_name} split '{split}'"
    if images.shape[-1] != data_config.num_channels:
      found, expected = images.shape[-1], data_config.num_channels
      raise DataError(f"{what}: images have {found} channel(s), config.data.num_channels={expected}")
    images = _fit(images, data_config.image_size, data_config.fit, what)
    if masks is not None:
      masks = _fit(masks, data_config.image_size, data_config.fit, what, nearest=True)
    loaded = Split(images, labels, masks, skipped)
  if loaded.labels.max() >= data_config.num_classes:
    label, limit = loaded.labels.max(), data_config.num_classes
    raise DataError(f"{source} split '{split}': label {label} >= config.data.num_classes={limit}")
  return loaded


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of example indices that epoch `epoch` visits: a pure function of (seed, epoch)."""
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


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


def parse_augment(augment: str) -> Augment:
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


def augmentation_draws(num_examples: int, seed: int, epoch: int, augment: str) -> np.ndarray:
  """Per position of epoch `epoch`, which of the `augment` flips it gets (see `apply_augmentation`): a pure
  function of (seed, epoch), like `epoch_order`, so a resumed run augments exactly as an uninterrupted one."""
  flips = parse_augment(augment).flips
  if flips == "none":
    return np.zeros(num_examples, np.int64)
  return np.random.default_rng((seed, epoch, 1)).integers(0, 4 if flips == "flips" else 8, num_examples)


def apply_augmentation(images: np.ndarray, draws: np.ndarray) -> np.ndarray:
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


def apply_extra_augmentation(images: np.ndarray, positions: np.ndarray, seed: int, augment: Augment) -> np.ndarray:
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


def train_batches(
  split: Split,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  augment: str = "none",
) -> Iterator[dict]:
  """Endless shuffled training batches; this process's rows of each global batch, from `start_step` on.

  Global batch s holds stream positions i = s*B + j (j < B); position i is example
  epoch_order(N, seed, i // N)[i % N], a fresh permutation per epoch, transformed by
  augmentation_draws(N, seed, i // N, augment)[i % N] and then by the further terms drawn from (seed, i)
  (`apply_extra_augmentation`). Yields
  {"image": float32 [B/P, S, S, C] in [-1, 1], "label": int32 [B/P]}.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by {process_count} processes")
  num_examples, local_batch_size = len(split.labels), global_batch_size // process_count
  augmentation_draws(0, seed, 0, augment)  # a bad name fails here, not at the first batch
  parsed = parse_augment(augment)
  if parsed.corrupt and split.images.shape[-1] not in (1, 3):
    raise ConfigError(
      f"config.data.augment={augment!r}: corruptions need 1 or 3 channels, not {split.images.shape[-1]}"
    )
  return _train_batches(
    split, global_batch_size, local_batch_size, seed, start_step, process_index, num_examples, augment
  )


def _train_batches(split, global_batch_size, local_batch_size, seed, start_step, process_index, num_examples, augment):
  parsed = parse_augment(augment)
  epochs_seen = {}  # epoch -> (permutation, augmentation draws), for the (at most two) epochs the batch spans
  for step in range(start_step, np.iinfo(np.int64).max):
    rows = step * global_batch_size + process_index * local_batch_size + np.arange(local_batch_size)
    epochs, positions = np.divmod(rows, num_examples)
    epochs_seen = {
      e: epochs_seen[e]
      if e in epochs_seen
      else (epoch_order(num_examples, seed, e), augmentation_draws(num_examples, seed, e, augment))
      for e in np.unique(epochs)
    }
    indices, transforms = np.empty(local_batch_size, np.int64), np.empty(local_batch_size, np.int64)
    for epoch, (order, draws) in epochs_seen.items():
      indices[epochs == epoch] = order[positions[epochs == epoch]]
      transforms[epochs == epoch] = draws[positions[epochs == epoch]]
    images = split.images[indices]
    if parsed.flips != "none":
      images = apply_augmentation(images, transforms)
    if parsed.extras:
      images = apply_extra_augmentation(images, rows, seed, parsed)
    yield {"image": images.astype(np.float32) / 127.5 - 1.0, "label": split.labels[indices]}


def eval_batches(split: Split, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
  """Examples [start, stop) in order, in batches padded to `batch_size` so shapes never change.

  Yields {"image": float32 [batch_size, S, S, C] in [-1, 1], "label": int32, "index": int32 (example
  index, -1 for padding), "valid": bool}; padding rows are zero images with label 0.
  """
  stop = len(split.labels) if stop is None else min(stop, len(split.labels))
  for first in range(start, stop, batch_size):
    count = min(batch_size, stop - first)
    image = np.zeros((batch_size, *split.images.shape[1:]), np.float32)
    image[:count] = split.images[first : first + count].astype(np.float32) / 127.5 - 1.0
    label = np.zeros(batch_size, np.int32)
    label[:count] = split.labels[first : first + count]
    index = np.full(batch_size, -1, np.int32)
    index[:count] = np.arange(first, first + count)
    yield {"image": image, "label": label, "index": index, "valid": index >= 0}
