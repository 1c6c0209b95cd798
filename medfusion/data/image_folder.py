"""Reads a user's image folder laid out as `root/<split>/<class_name>/<image files>` (as tfds ImageFolder).

Images are decoded with PIL (and DICOM files with pydicom) rather than `tfds.folder_dataset.ImageFolder`, which
decodes inside the tf.data graph: there a bad file stops the whole pipeline with an error that does not name it, and
it cannot be skipped. Here every file is checked, a bad one either stops the run (naming it) or is skipped and
reported, and every image is converted to the requested number of channels (L or RGB) in 8 bits:

- 8-bit files (PNG, JPEG, BMP, GIF, TIFF) are taken as they are.
- Files with more bits per pixel (16- or 32-bit integer PNG/TIFF, float TIFF) are stretched from the image's own
  minimum (0) to its own maximum (255): a 12-bit X-ray stored as 16-bit PNG, whose 0-4095 would otherwise come out
  nearly black or white, spans the full range, as a viewer's default window shows it. A constant image is all 0.
  NaN or infinite pixels make the file bad.
- DICOM files (.dcm, .dicom) go through the header's modality LUT (rescale slope and intercept), then its VOI LUT or
  window, which fixes the scale: the window's range maps to 0-255 (without a window, the image's own minimum and
  maximum do); MONOCHROME1 images are inverted so that high values are bright. Multi-frame and palette-colour files
  are refused (save one frame per file; convert palette images to RGB).
"""

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from medfusion.data.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", *DICOM_SUFFIXES)
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL modes of more than 8 bits per pixel (grayscale)


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


# What decoding a bad file raises: PIL's errors, ours (ValueError), pydicom's (which also raises RuntimeError when
# no plugin decodes the pixel data and AttributeError when a file has none).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, AttributeError)


def _dicom_error() -> type:
  from pydicom.errors import InvalidDicomError

  return InvalidDicomError


def stretch_to_uint8(pixels: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
  """Maps [lo, hi] (default: the image's own minimum and maximum) linearly to uint8 [0, 255], clipping outside;
  a constant image is all 0. Raises ValueError for NaN or infinite pixels."""
  pixels = np.asarray(pixels, np.float64)
  if not np.all(np.isfinite(pixels)):
    raise ValueError(f"{np.count_nonzero(~np.isfinite(pixels))} NaN or infinite pixel values")
  lo = pixels.min() if lo is None else lo
  hi = pixels.max() if hi is None else hi
  if hi <= lo:
    return np.zeros(pixels.shape, np.uint8)
  return np.round((pixels - lo) / (hi - lo) * 255.0).clip(0, 255).astype(np.uint8)


def _channels(pixels: np.ndarray, num_channels: int) -> np.ndarray:
  """uint8 [H, W] or [H, W, 3] as [H, W, num_channels] (RGB to L with PIL's weights)."""
  converted = np.asarray(Image.fromarray(pixels).convert("L" if num_channels == 1 else "RGB"))
  return converted[..., None] if num_channels == 1 else converted


def _decode(path: pathlib.Path, num_channels: int) -> np.ndarray:
  """Decodes an image file to uint8 [H, W, num_channels] by the rules of the module docstring."""
  if path.suffix.lower() in DICOM_SUFFIXES:
    return _channels(_decode_dicom(path), num_channels)
  with Image.open(path) as image:
    if getattr(image, "n_frames", 1) > 1 and image.format == "TIFF":
      raise ValueError(f"a TIFF of {image.n_frames} frames; save one image per file")
    image.load()
    if image.mode in WIDE_MODES:
      try:
        return _channels(stretch_to_uint8(np.asarray(image)), num_channels)
      except ValueError as e:
        raise ValueError(f"PIL mode {image.mode}: {e}") from None
    if image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
      raise ValueError(f"PIL mode {image.mode} is not supported; save it as 8- or 16-bit grayscale or RGB")
    pixels = np.asarray(image.convert("L" if num_channels == 1 else "RGB"))
  return pixels[..., None] if num_channels == 1 else pixels


def _decode_dicom(path: pathlib.Path) -> np.ndarray:
  """A single-frame DICOM image as uint8 [H, W] (grayscale) or [H, W, 3] (colour)."""
  import pydicom
  from pydicom.pixels import apply_modality_lut, apply_voi_lut

  ds = pydicom.dcmread(path)
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if frames > 1:
    raise ValueError(f"a multi-frame DICOM ({frames} frames); save one frame per file")
  photometric = str(ds.get("PhotometricInterpretation", ""))
  if photometric == "PALETTE COLOR":
    raise ValueError("a palette-colour DICOM (PhotometricInterpretation PALETTE COLOR); convert it to RGB")
  pixels = ds.pixel_array  # colour (RGB, YBR) comes as RGB
  if int(ds.get("SamplesPerPixel", 1)) == 3:
    return pixels if pixels.dtype == np.uint8 else stretch_to_uint8(pixels)
  pixels = apply_modality_lut(pixels, ds)
  lo = hi = None
  if "VOILUTSequence" in ds or "WindowCenter" in ds:
    windowed = apply_voi_lut(pixels, ds)
    if "VOILUTSequence" not in ds:  # a window: its output range, found by windowing values far outside it
      extremes = apply_voi_lut(np.array([pixels.min() - 1e9, pixels.max() + 1e9], np.float64), ds)
      lo, hi = float(extremes.min()), float(extremes.max())
    pixels = windowed
  scaled = stretch_to_uint8(pixels, lo, hi)
  return 255 - scaled if photometric == "MONOCHROME1" else scaled


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
      except (*DECODE_ERRORS, _dicom_error()) as e:
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
