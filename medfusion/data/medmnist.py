"""TFDS builder for MedMNIST-layout .npz files.

A file holds `<split>_images` (uint8, (N, H, W) grayscale or (N, H, W, 3) RGB) and `<split>_labels`
((N, 1) or (N,)) for the splits train, val and test; a split exists when both of its keys do. Each file
gets its own tfds config named after its stem, the first 8 hex digits of its sha256 and the class count,
so two different files (or class counts) never share a cache.
"""

import hashlib
import pathlib
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from medfusion.data.errors import DataError

SPLITS = ("train", "val", "test")


def _array_headers(path: pathlib.Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Reads every array's shape and dtype from an npz without loading the data."""
  headers = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for member in archive.namelist():
        if not member.endswith(".npy"):
          continue
        with archive.open(member) as f:
          version = np.lib.format.read_magic(f)
          read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
          shape, _, dtype = read(f)
        headers[member.removesuffix(".npy")] = (shape, dtype)
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except (zipfile.BadZipFile, ValueError) as e:
    raise DataError(f"{path}: not a readable .npz file ({e})") from None
  return headers


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def validate(path: pathlib.Path, num_classes: int) -> dict[str, tuple[int, int, int, int]]:
  """Checks the file's layout and labels; returns {split: (N, H, W, C)} or raises DataError."""
  headers = _array_headers(path)
  layout = {}
  for split in SPLITS:
    images_key, labels_key = f"{split}_images", f"{split}_labels"
    if images_key not in headers and labels_key not in headers:
      continue
    for key, other in ((images_key, labels_key), (labels_key, images_key)):
      if key not in headers:
        raise DataError(f"{path}: has '{other}' but no '{key}'; a split needs both arrays")
    (shape, dtype), (label_shape, label_dtype) = headers[images_key], headers[labels_key]
    if dtype != np.uint8:
      raise DataError(f"{path}: '{images_key}' has dtype {dtype}, expected uint8")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))):
      raise DataError(f"{path}: '{images_key}' has shape {shape}, expected (N, H, W) or (N, H, W, 3)")
    if not (len(label_shape) == 1 or (len(label_shape) == 2 and label_shape[1] == 1)):
      raise DataError(f"{path}: '{labels_key}' has shape {label_shape}, expected (N,) or (N, 1)")
    if not np.issubdtype(label_dtype, np.integer):
      raise DataError(f"{path}: '{labels_key}' has dtype {label_dtype}, expected integers")
    if shape[0] != label_shape[0]:
      raise DataError(f"{path}: '{images_key}' holds {shape[0]} images but '{labels_key}' {label_shape[0]} labels")
    if shape[0] == 0:
      raise DataError(f"{path}: split '{split}' is empty ('{images_key}' has shape {shape})")
    layout[split] = (*shape[:3], shape[3] if len(shape) == 4 else 1)
  if not layout:
    raise DataError(f"{path}: no split found; expected key pairs like 'train_images'/'train_labels'")
  if len({dims[1:] for dims in layout.values()}) > 1:
    raise DataError(f"{path}: splits differ in image shape: {layout}")
  with np.load(path) as arrays:
    for split in layout:
      labels = arrays[f"{split}_labels"]
      bad = (labels < 0) | (labels >= num_classes)
      if bad.any():
        raise DataError(
          f"{path}: '{split}_labels' holds {labels[bad].ravel()[0]}, expected labels in [0, {num_classes})"
        )
  return layout


class MedmnistNpz(tfds.core.GeneratorBasedBuilder):
  """A MedMNIST-layout .npz file as a tfds dataset with features image, label and index."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, npz_path: str, num_classes: int, **kwargs):
    self._npz_path = pathlib.Path(npz_path).expanduser()
    self._num_classes = num_classes
    self._layout = validate(self._npz_path, num_classes)
    stem = re.sub(r"[^a-z0-9]+", "_", self._npz_path.stem.lower()).strip("_") or "npz"
    name = f"{stem}_{_sha256(self._npz_path)[:8]}_c{num_classes}"
    config = tfds.core.BuilderConfig(name=name, description=f"{self._npz_path.name}, {num_classes} classes")
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    _, height, width, channels = next(iter(self._layout.values()))
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(height, width, channels)),
          "label": tfds.features.ClassLabel(num_classes=self._num_classes),
          "index": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is in the local file.
    return {split: self._generate_examples(split) for split in self._layout}

  def _generate_examples(self, split: str):
    with np.load(self._npz_path) as arrays:
      images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
    if images.ndim == 3:
      images = images[..., None]
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
      yield index, {"image": image, "label": int(label), "index": index}
