"""What the tfds builders of manually downloaded image datasets (CheXpert, ISIC) share.

A builder turns its CSV files into `Record`s (image file, label, the CSV line that listed it) per split; the
base class `ManualImages` decodes them in a thread pool (PIL releases the GIL while decoding and resizing),
resizes each to S x S with antialiasing and stores image, label, index and path. A missing or unreadable file
either stops the build with a one-line DataError naming it, or is skipped and recorded in the dataset's
metadata, so `skipped(split)` still lists it when the split is later read from the tfds cache.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from medfusion.data import image_folder
from medfusion.data.errors import DataError

SPLITS = ("train", "val", "test")
_PREFETCH = 64  # images decoded ahead of the writer


@dataclasses.dataclass(frozen=True)
class Record:
  """One example to read: its image file, label and the CSV line that listed it (named in errors)."""

  path: pathlib.Path
  label: int
  source: str


def read_csv(path: pathlib.Path, columns: Sequence[str], hint: str) -> list[tuple[int, dict[str, str]]]:
  """The rows of a CSV file with a header, as (line number, row); `hint` says where a missing file comes from."""
  if not path.is_file():
    raise DataError(f"{path}: file not found; {hint}")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
      raise DataError(f"{path}: no column {missing[0]!r} (its header is {reader.fieldnames})")
    return [(reader.line_num, row) for row in reader]


def config_name(prefix: str, options: Mapping, files: Sequence[pathlib.Path]) -> str:
  """`prefix` and 8 hex digits of a hash of the options and the bytes of `files`: one tfds config per content."""
  digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
  for file in files:
    digest.update(file.read_bytes())
  return f"{prefix}_{digest.hexdigest()[:8]}"


def read_image(path: pathlib.Path, mode: str, size: int) -> np.ndarray:
  """Decodes an image as PIL `mode` ('L' or 'RGB') and resizes it to size x size: uint8 [size, size, C]. Images of
  more than 8 bits are stretched to 8 as in image folders (`image_folder.stretch_to_uint8`); NaN pixels are an error."""
  with Image.open(path) as image:
    image.draft(mode, (size, size))  # JPEG: decode at the smallest DCT scale still at least size x size.
    if image.mode in image_folder.WIDE_MODES:
      image = Image.fromarray(image_folder.stretch_to_uint8(np.asarray(image)))
    resized = image.convert(mode).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
  pixels = np.asarray(resized)
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _decode_ahead(
  records: Sequence[Record], mode: str, size: int
) -> Iterator[tuple[Record, concurrent.futures.Future]]:
  """(record, future of its image) in order, with up to _PREFETCH images decoding ahead in a thread pool."""
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    pending = collections.deque()
    for record in records:
      pending.append((record, pool.submit(read_image, record.path, mode, size)))
      if len(pending) > _PREFETCH:
        yield pending.popleft()
    yield from pending


def _bad_file_message(record: Record, error: Exception) -> str:
  what = "image file not found" if isinstance(error, FileNotFoundError) else f"unreadable image ({error})"
  message = f"{record.path}: {what}, listed in {record.source}; pass --config.data.on_bad_file=skip to skip such files"
  return " ".join(message.split())


class ManualImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Labelled images listed per split, resized to one size; features image, label, index and path."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MODE: str  # PIL mode of the stored images: 'L' (1 channel) or 'RGB' (3)

  def __init__(
    self,
    *,
    root: pathlib.Path,
    splits: Mapping[str, Sequence[Record]],
    class_names: Sequence[str],
    image_size: int,
    on_bad_file: str,
    config: tfds.core.BuilderConfig,
    **kwargs,
  ):
    if on_bad_file not in ("stop", "skip"):
      raise ValueError(f"on_bad_file must be 'stop' or 'skip', got '{on_bad_file}'")
    for split, records in splits.items():
      if not records:
        raise DataError(f"{root}: split '{split}' has no examples ({config.description})")
    self._root, self._splits, self._class_names = root, splits, tuple(class_names)
    self._image_size, self._on_bad_file = image_size, on_bad_file
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    channels = 1 if self.MODE == "L" else 3
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(self._image_size, self._image_size, channels)),
          "label": tfds.features.ClassLabel(names=self._class_names),
          "index": tfds.features.Scalar(dtype=np.int64),
          "path": tfds.features.Text(),  # the image file, relative to the manual download folder
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are in the manual download folder given to the constructor.
    self.info.metadata["skipped"] = {split: [] for split in self._splits}
    return {split: self._generate_examples(split, records) for split, records in self._splits.items()}

  def _generate_examples(self, split: str, records: Sequence[Record]) -> Iterator[tuple[int, dict]]:
    skipped, index = self.info.metadata["skipped"][split], 0
    for record, future in _decode_ahead(records, self.MODE, self._image_size):
      try:
        image = future.result()
      except (OSError, ValueError, SyntaxError) as e:
        if self._on_bad_file == "stop":
          raise DataError(_bad_file_message(record, e)) from None
        skipped.append(str(record.path))
        continue
      path = record.path.relative_to(self._root).as_posix()
      yield index, {"image": image, "label": record.label, "index": index, "path": path}
      index += 1
    if not index:
      raise DataError(
        f"{self._root}: all {len(records)} images of split '{split}' are missing or unreadable ({skipped[0]}, ...)"
      )

  def skipped(self, split: str) -> tuple[str, ...]:
    """The files of `split` skipped as missing or unreadable when the dataset was built (on_bad_file='skip')."""
    return tuple(self.info.metadata["skipped"][split])
