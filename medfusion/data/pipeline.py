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

from medfusion.data import augmentation, image_folder
from medfusion.data.errors import DataError
from medfusion.errors import ConfigError
from medfusion.writers import write_npz_atomic

_RESIZE_CHUNK = 1024  # images resized per call, bounding the float32 copy
SOURCES = ("npz", "synthetic_lesions", "image_folder", "arrays", "chexpert", "isic")
FITS = ("pad", "resize")
ON_BAD_FILE = ("stop", "skip")
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
  augmentation.parse(data_config.augment)
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


def half_split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A fixed, seeded split of a split's image indices into two halves (sorted index arrays), stratified by class
  so that rare classes land in both: settings are chosen on one half and reported on the other (and the reverse,
  `draw_analysis.half_split_protocol`). The same seed and labels always give the same halves."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  first = []
  for i, c in enumerate(np.unique(labels)):
    members = rng.permutation(np.flatnonzero(labels == c))
    first.append(members[: (len(members) + i % 2) // 2])  # odd classes alternate which half gets the extra one
  first = np.sort(np.concatenate(first))
  return first, np.setdiff1d(np.arange(len(labels)), first)


HALVES = ("all", "A", "B")


def half_rows(labels: np.ndarray, half: str, seed: int = 0) -> np.ndarray:
  """The indices in `half`: every one for 'all', else 'A' / 'B' of `half_split(labels, seed)`, in index order."""
  if half not in HALVES:
    raise ValueError(f"half={half!r} is not one of {HALVES}")
  if half == "all":
    return np.arange(len(labels))
  return half_split(labels, seed)[HALVES.index(half) - 1]


def split_half(split: Split, half: str, seed: int = 0) -> Split:
  """The images of `split` in `half` (`half_rows`); the split itself for 'all'."""
  rows = half_rows(split.labels, half, seed)
  if half == "all":
    return split
  masks = None if split.masks is None else split.masks[rows]
  return dataclasses.replace(split, images=split.images[rows], labels=split.labels[rows], masks=masks)


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
  augmentation.flip_draws(N, seed, i // N, augment)[i % N] and then by the further terms drawn from (seed, i)
  (`augmentation.apply_extras`). Yields
  {"image": float32 [B/P, S, S, C] in [-1, 1], "label": int32 [B/P]}.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by {process_count} processes")
  num_examples, local_batch_size = len(split.labels), global_batch_size // process_count
  augmentation.flip_draws(0, seed, 0, augment)  # a bad name fails here, not at the first batch
  parsed = augmentation.parse(augment)
  if parsed.corrupt and split.images.shape[-1] not in (1, 3):
    raise ConfigError(
      f"config.data.augment={augment!r}: corruptions need 1 or 3 channels, not {split.images.shape[-1]}"
    )
  return _train_batches(
    split, global_batch_size, local_batch_size, seed, start_step, process_index, num_examples, augment
  )


def _train_batches(split, global_batch_size, local_batch_size, seed, start_step, process_index, num_examples, augment):
  parsed = augmentation.parse(augment)
  epochs_seen = {}  # epoch -> (permutation, augmentation draws), for the (at most two) epochs the batch spans
  for step in range(start_step, np.iinfo(np.int64).max):
    rows = step * global_batch_size + process_index * local_batch_size + np.arange(local_batch_size)
    epochs, positions = np.divmod(rows, num_examples)
    epochs_seen = {
      e: epochs_seen[e]
      if e in epochs_seen
      else (epoch_order(num_examples, seed, e), augmentation.flip_draws(num_examples, seed, e, augment))
      for e in np.unique(epochs)
    }
    indices, transforms = np.empty(local_batch_size, np.int64), np.empty(local_batch_size, np.int64)
    for epoch, (order, draws) in epochs_seen.items():
      indices[epochs == epoch] = order[positions[epochs == epoch]]
      transforms[epochs == epoch] = draws[positions[epochs == epoch]]
    images = split.images[indices]
    if parsed.flips != "none":
      images = augmentation.apply_flips(images, transforms)
    if parsed.extras:
      images = augmentation.apply_extras(images, rows, seed, parsed)
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
