"""Reads a user's image folder laid out as `root/<split>/<class_name>/<image files>` (as tfds ImageFolder).

Images are decoded with PIL rather than `tfds.folder_dataset.ImageFolder`, which decodes inside the
tf.data graph: there a bad file stops the whole pipeline with an error that does not name it, and it cannot
be skipped. Here every file is checked, a bad one either stops the run (naming it) or is skipped and
reported, and every image is converted to the requested number of channels (L or RGB).
"""

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from medfusion.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  """One split: decoded images (uint8 [H, W, C], sizes may differ), their labels and paths, skipped files."""

  images: list[np.ndarray]
  labels: np.ndarray
  paths: list[str]
  skipped: tuple[str, ...]


def _subfolders(path: pathlib.Path) -> list[str]:
  return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def splits(root: str) -> list[str]:
  """The split folders under `root`."""
  path = pathlib.Path(root).expanduser()
  if not path.is_dir():
    raise DataError(f"{path}: image folder does not exist")
  return _subfolders(path)


def find_class_names(root: str, expected: Sequence[str] = ()) -> tuple[str, ...]:
  """Class names: the sorted class folders of all splits, or `expected` when given (same set required)."""
  path = pathlib.Path(root).expanduser()
  found = sorted({name for split in splits(root) for name in _subfolders(path / split)})
  if len(found) < 2:
    raise DataError(f"{path}: found classes {found} under its split folders; at least two class folders are needed")
  if expected and sorted(expected) != found:
    raise DataError(f"{path}: class folders {found} do not match config.data.class_names {sorted(expected)}")
  return tuple(expected) if expected else tuple(found)


def _decode(path: pathlib.Path, num_channels: int) -> np.ndarray:
  """Decodes an image file to uint8 [H, W, num_channels]; 16-bit grayscale is scaled to 8 bits."""
  with Image.open(path) as image:
    image.load()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
      image = Image.fromarray((np.asarray(image, np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    pixels = np.asarray(image.convert("L" if num_channels == 1 else "RGB"))
  return pixels[..., None] if num_channels == 1 else pixels


def read_split(root: str, split: str, num_channels: int, class_names: Sequence[str], on_bad_file: str) -> FolderSplit:
  """Decodes every image of `root/split`, labelled by the position of its class folder in `class_names`."""
  if on_bad_file not in ("stop", "skip"):
    raise ValueError(f"on_bad_file must be 'stop' or 'skip', got '{on_bad_file}'")
  if num_channels not in (1, 3):
    raise DataError(f"config.data.num_channels is {num_channels}; image folders are read as 1 (L) or 3 (RGB)")
  split_path = pathlib.Path(root).expanduser() / split
  available = splits(root)
  if split not in available:
    raise DataError(f"{split_path}: split folder missing; available splits: {available}")
  class_folders = _subfolders(split_path)
  if not class_folders:
    raise DataError(f"{split_path}: no class folders; expected {split_path}/<class_name>/<image files>")
  images, labels, paths, skipped = [], [], [], []
  for class_name in class_folders:
    if class_name not in class_names:
      raise DataError(f"{split_path / class_name}: class '{class_name}' is not in {list(class_names)}")
    files = sorted(p for p in (split_path / class_name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise DataError(f"{split_path / class_name}: no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    for file in files:
      try:
        images.append(_decode(file, num_channels))
      except (OSError, ValueError, SyntaxError) as e:
        if on_bad_file == "stop":
          raise DataError(
            f"{file}: unreadable image ({type(e).__name__}: {e}); pass --config.data.on_bad_file=skip to skip them"
          ) from None
        skipped.append(str(file))
        continue
      labels.append(class_names.index(class_name))
      paths.append(str(file))
  if not images:
    raise DataError(f"{split_path}: no readable images")
  return FolderSplit(images, np.asarray(labels, np.int32), paths, tuple(skipped))
