"""TFDS builder for ISIC melanoma classification from its manual download: melanoma (1) against the rest (0).

The manual download folder (config.data.isic.manual_dir) holds one of two layouts:
- '2020' (ISIC 2020, https://challenge.isic-archive.com/data/#2020): `train/<image_name>.jpg` (the folder that
  ISIC_2020_Training_JPEG.zip unpacks to) and `train.csv` with at least the columns `image_name,target`
  (ISIC_2020_Training_GroundTruth.csv saved under that name, or Kaggle's SIIM-ISIC train.csv);
- '2019' (ISIC 2019, https://challenge.isic-archive.com/data/#2019): `ISIC_2019_Training_Input/<image>.jpg`
  and `ISIC_2019_Training_GroundTruth.csv` with one-hot columns `image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`;
  MEL is the positive class.

Own splits: a deterministic split stratified by class: of each class, a `test_fraction` and a `val_fraction`
drawn by `split_seed` go to 'test' and 'val', the rest to 'train' (by image, so one patient's lesions may
fall in two splits). Split lists: with `split_lists`, the folder's `isic-train.csv`, `isic-valid.csv` and
`isic-test.csv` (columns `image_name,target`, the original work's lists in data/original_splits) are the
splits 'train', 'val' and 'test' row for row, with their labels. Those lists mix ISIC 2019 and 2020 images
(their 5,106 melanomas are 2019's 4,522 and 2020's 584), so each image is looked up in the layout's image
folder and then in the other layout's, when it is there.

Images are stored as RGB at image_size x image_size (squashed when not square, as the original work did); each
option set and CSV content gets its own tfds config, so caches never mix.
"""

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from medfusion.data import manual_download
from medfusion.data.errors import DataError

SPLIT_LISTS = {"train": "isic-train.csv", "val": "isic-valid.csv", "test": "isic-test.csv"}
_LISTS_HINT = "the original work's lists are in data/original_splits (config.data.isic.split_lists)"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where one ISIC release keeps its labels and images, and how to get them."""

  csv: str
  images: str
  name_column: str
  label_column: str
  download: str


LAYOUTS = {
  "2020": Layout(
    "train.csv",
    "train",
    "image_name",
    "target",
    "from https://challenge.isic-archive.com/data/#2020 unpack ISIC_2020_Training_JPEG.zip (folder train/) and save "
    "ISIC_2020_Training_GroundTruth.csv as train.csv",
  ),
  "2019": Layout(
    "ISIC_2019_Training_GroundTruth.csv",
    "ISIC_2019_Training_Input",
    "image",
    "MEL",
    "from https://challenge.isic-archive.com/data/#2019 unpack ISIC_2019_Training_Input.zip and put "
    "ISIC_2019_Training_GroundTruth.csv beside it",
  ),
}


def _label(text: str, column: str, source: str) -> int:
  try:
    value = float(text)
  except ValueError:
    value = None
  if value not in (0.0, 1.0):
    raise DataError(f"{source}: column '{column}' holds {text!r}, expected 0 or 1")
  return int(value)


def _labelled(csv_path: pathlib.Path, name_column: str, label_column: str, hint: str):
  """(image name, label, source) for every row of a CSV."""
  for line, row in manual_download.read_csv(csv_path, (name_column, label_column), hint):
    source = f"{csv_path} line {line}"
    yield row[name_column], _label(row[label_column], label_column, source), source


def _stratified(rows: list, val_fraction: float, test_fraction: float, split_seed: int) -> dict[str, list]:
  """Each class's rows split by fractions in an order drawn by `split_seed`; splits keep the CSV order."""
  assigned = {}
  rng = np.random.default_rng(split_seed)
  for label in (0, 1):
    positions = [i for i, (_, row_label, _) in enumerate(rows) if row_label == label]
    shuffled = [positions[i] for i in rng.permutation(len(positions))]
    num_test, num_val = round(test_fraction * len(positions)), round(val_fraction * len(positions))
    for rank, position in enumerate(shuffled):
      assigned[position] = "test" if rank < num_test else "val" if rank < num_test + num_val else "train"
  return {split: [rows[i] for i in sorted(assigned) if assigned[i] == split] for split in manual_download.SPLITS}


def _find(folders: list[pathlib.Path], name: str) -> pathlib.Path:
  """`<name>.jpg` in the first folder that holds it, else in the first folder (so a missing file is named there)."""
  paths = [folder / f"{name}.jpg" for folder in folders]
  return next((path for path in paths if path.is_file()), paths[0])


class IsicManual(manual_download.ManualImages):
  """ISIC 2019 or 2020 from a manual download as a two-class tfds dataset (0 other, 1 melanoma), RGB."""

  MODE = "RGB"

  def __init__(
    self,
    *,
    manual_dir: str,
    layout: str,
    split_lists: str,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    image_size: int,
    on_bad_file: str,
    **kwargs,
  ):
    if layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got '{layout}'")
    root, own = pathlib.Path(manual_dir).expanduser(), LAYOUTS[layout]
    hint = f"{own.download}, all into {root} (config.data.isic.manual_dir)"
    if not root.is_dir():
      raise DataError(f"{root}: folder not found; {hint}")
    if not (root / own.images).is_dir():
      raise DataError(f"{root / own.images}: folder not found; {hint}")
    options = {"layout": layout, "image_size": image_size, "on_bad_file": on_bad_file}
    if split_lists:
      lists = pathlib.Path(split_lists).expanduser()
      files = [lists / name for name in SPLIT_LISTS.values()]
      folders = [root / own.images, *(root / other.images for other in LAYOUTS.values() if other != own)]
      folders = [folder for folder in folders if folder.is_dir()]
      options["folders"] = [folder.name for folder in folders]  # adding a folder later rebuilds the dataset
      rows = {
        split: list(_labelled(lists / name, "image_name", "target", _LISTS_HINT)) for split, name in SPLIT_LISTS.items()
      }
      description = f"split lists of {lists}"
    else:
      files = [root / own.csv]
      options.update(val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed)
      rows = _stratified(
        list(_labelled(root / own.csv, own.name_column, own.label_column, hint)),
        val_fraction,
        test_fraction,
        split_seed,
      )
      folders = [root / own.images]
      description = f"stratified {val_fraction:g} val / {test_fraction:g} test (seed {split_seed})"
    splits = {
      split: [manual_download.Record(_find(folders, name), label, source) for name, label, source in split_rows]
      for split, split_rows in rows.items()
    }
    super().__init__(
      root=root,
      splits=splits,
      class_names=("other", "melanoma"),
      image_size=image_size,
      on_bad_file=on_bad_file,
      config=tfds.core.BuilderConfig(
        name=manual_download.config_name(f"isic{layout}_{image_size}", options, files),
        description=f"ISIC {layout} layout: melanoma vs other, {description}, {image_size}x{image_size}",
      ),
      **kwargs,
    )
