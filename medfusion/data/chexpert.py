"""TFDS builder for CheXpert (Irvin et al. 2019) from its manual download: one finding against No Finding.

The manual download folder (config.data.chexpert.manual_dir) holds `CheXpert-v1.0-small/` or the full
`CheXpert-v1.0/` (the small one is used when both are there), each with `train.csv`, `valid.csv` and the
images they list under `train/` and `valid/`. A CSV's `Path` starts with the folder name
(`CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`); its findings are 1.0, 0.0, -1.0
(uncertain) or blank (not mentioned; read as 0.0, CheXpert's convention).

Own splits: a row is labelled 1 when `finding` is positive and 0 when No Finding is; a row with neither (or,
through the uncertain policy, both) is dropped. An uncertain (-1.0) value counts as positive, negative, or
drops its row, by the `uncertain` option. 'val' is a fraction of train.csv's patients, drawn by `split_seed`,
so no patient is in both train and val; 'test' is the official valid.csv (other patients again).

Split lists: with `split_lists`, the folder's `chexpert-train.csv`, `chexpert-valid.csv` and
`chexpert-test.csv` (the original work's lists, bundled in data/original_splits) are the splits 'train', 'val'
and 'test', row for row, labelled by their `finding` and No Finding columns. Their `healthy_or_sick` column is
'true' on every row (it is the XOR of the two findings that selected the rows), so it is not a label.

Images are stored as grayscale at image_size x image_size (squashed when not square, as the original work
did); each option set and CSV content gets its own tfds config, so caches never mix.
"""

import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from medfusion.data import manual_download
from medfusion.data.errors import DataError

FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")  # in order of preference
NO_FINDING = "No Finding"
UNCERTAIN = ("positive", "negative", "drop")
SPLIT_LISTS = {"train": "chexpert-train.csv", "val": "chexpert-valid.csv", "test": "chexpert-test.csv"}
_DOWNLOAD = "https://stanfordmlgroup.github.io/competitions/chexpert/"
_LISTS_HINT = "the original work's lists are in data/original_splits (config.data.chexpert.split_lists)"


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _value(row: dict[str, str], column: str, source: str) -> float:
  """A finding's value: 1.0, 0.0 or -1.0, blank read as 0.0."""
  text = row[column].strip()
  if not text:
    return 0.0
  try:
    value = float(text)
  except ValueError:
    value = None
  if value not in (1.0, 0.0, -1.0):
    raise DataError(f"{source}: column '{column}' holds {text!r}, expected 1.0, 0.0, -1.0 or blank")
  return value


def row_label(row: dict[str, str], finding: str, uncertain: str, source: str) -> int | None:
  """1 for a `finding`-positive row, 0 for a No-Finding-positive one, None (dropped) for the rest."""
  positive = []
  for column in (finding, NO_FINDING):
    value = _value(row, column, source)
    if value == -1.0:
      if uncertain == "drop":
        return None
      value = 1.0 if uncertain == "positive" else 0.0
    positive.append(value == 1.0)
  sick, healthy = positive
  return None if sick == healthy else int(sick)


def _rows(csv_path: pathlib.Path, columns: tuple[str, ...], hint: str):
  """(Path parts, row, source) for every row of a CSV whose Path starts with a CheXpert folder name."""
  for line, row in manual_download.read_csv(csv_path, ("Path", *columns), hint):
    parts, source = pathlib.PurePosixPath(row["Path"]).parts, f"{csv_path} line {line}"
    if len(parts) < 5 or parts[0] not in FOLDERS:
      example = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
      raise DataError(f"{source}: Path {row['Path']!r} is not like {example!r}")
    yield parts, row, source


def _record(data: pathlib.Path, parts: tuple[str, ...], label: int, source: str) -> manual_download.Record:
  """The record of a Path, resolved under the CheXpert folder in use (lists name the small one)."""
  return manual_download.Record(data.joinpath(*parts[1:]), label, source)


def _listed_splits(data: pathlib.Path, lists: pathlib.Path, finding: str) -> dict[str, list]:
  """The split lists row for row; a row that is not exactly one of the two classes is an error."""
  splits = {}
  for split, name in SPLIT_LISTS.items():
    splits[split] = []
    for parts, row, source in _rows(lists / name, (finding, NO_FINDING), _LISTS_HINT):
      label = row_label(row, finding, "drop", source)
      if label is None:
        raise DataError(f"{source}: a split list needs exactly one of '{finding}' and '{NO_FINDING}' at 1.0")
      splits[split].append(_record(data, parts, label, source))
  return splits


def _own_splits(data, finding, uncertain, frontal_only, val_fraction, split_seed, hint) -> dict[str, list]:
  """train.csv split by patient into train and val, valid.csv as test; rows of neither class dropped."""
  columns = ("Frontal/Lateral", finding, NO_FINDING)
  train_rows = list(_rows(data / "train.csv", columns, hint))
  patients = sorted({parts[2] for parts, _, _ in train_rows})
  order = np.random.default_rng(split_seed).permutation(len(patients))
  val_patients = {patients[i] for i in order[: round(val_fraction * len(patients))]}
  splits = {"train": [], "val": [], "test": []}
  for csv_split, rows in (("train", train_rows), ("test", _rows(data / "valid.csv", columns, hint))):
    for parts, row, source in rows:
      label = row_label(row, finding, uncertain, source)
      if label is None or (frontal_only and row["Frontal/Lateral"] != "Frontal"):
        continue
      split = "val" if csv_split == "train" and parts[2] in val_patients else csv_split
      splits[split].append(_record(data, parts, label, source))
  return splits


class ChexpertManual(manual_download.ManualImages):
  """CheXpert from a manual download as a two-class tfds dataset (0 No Finding, 1 `finding`), grayscale."""

  MODE = "L"

  def __init__(
    self,
    *,
    manual_dir: str,
    split_lists: str,
    finding: str,
    uncertain: str,
    frontal_only: bool,
    val_fraction: float,
    split_seed: int,
    image_size: int,
    on_bad_file: str,
    **kwargs,
  ):
    if uncertain not in UNCERTAIN:
      raise ValueError(f"uncertain must be one of {UNCERTAIN}, got '{uncertain}'")
    root = pathlib.Path(manual_dir).expanduser()
    hint = f"download CheXpert-v1.0-small from {_DOWNLOAD} and unpack it into {root} (config.data.chexpert.manual_dir)"
    if not root.is_dir():
      raise DataError(f"{root}: folder not found; {hint}")
    folder = next((name for name in FOLDERS if (root / name).is_dir()), None)
    if folder is None:
      raise DataError(f"{root}: holds neither {FOLDERS[0]}/ nor {FOLDERS[1]}/; {hint}")
    options = {"folder": folder, "finding": finding, "image_size": image_size, "on_bad_file": on_bad_file}
    if split_lists:
      lists = pathlib.Path(split_lists).expanduser()
      files = [lists / name for name in SPLIT_LISTS.values()]
      splits = _listed_splits(root / folder, lists, finding)
      description = f"split lists of {lists}"
    else:
      files = [root / folder / "train.csv", root / folder / "valid.csv"]
      options.update(uncertain=uncertain, frontal_only=frontal_only, val_fraction=val_fraction, split_seed=split_seed)
      splits = _own_splits(root / folder, finding, uncertain, frontal_only, val_fraction, split_seed, hint)
      views = "frontal views" if frontal_only else "all views"
      description = f"uncertain {uncertain}, {views}, {val_fraction:g} of train patients in val (seed {split_seed})"
    super().__init__(
      root=root,
      splits=splits,
      class_names=("no_finding", _slug(finding)),
      image_size=image_size,
      on_bad_file=on_bad_file,
      config=tfds.core.BuilderConfig(
        name=manual_download.config_name(f"{_slug(finding)}_{image_size}", options, files),
        description=f"{folder}: {finding} vs {NO_FINDING}, {description}, {image_size}x{image_size}",
      ),
      **kwargs,
    )
