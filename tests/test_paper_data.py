"""Tests of the CheXpert and ISIC builders on tiny fake folders in the official layouts (no real data needed).

Every fake image is one flat colour, distinct per file and kept through resizing, so a loaded example's pixel
value tells which file it came from: splits, order and labels are checked file by file.
"""

import csv
import pathlib

import fakes
import ml_collections
import numpy as np
import pytest

from configs import default
from medfusion.data import pipeline
from medfusion.data.chexpert import ChexpertManual
from medfusion.data.errors import DataError
from medfusion.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent
SHIPPED_LISTS = REPO / "data" / "original_splits"
POLICIES = {"drop": 5, "positive": 6, "negative": 7}  # uncertain policy -> column of the expected label


def _expected(table, csv_split: str, numbers: dict[str, int], policy: str) -> dict[int, int]:
  """{image number: label} of the rows a policy keeps."""
  kept = {}
  for row in table:
    label = row[POLICIES[policy]]
    if label is not None:
      kept[numbers[fakes.chexpert_path(csv_split, *row[:3])]] = label
  return kept


def _data_config(tmp_path, source: str, manual_dir, **options):
  config = default.get_config().data
  config.update(source=source, tfds_data_dir=str(tmp_path / "tfds"), image_size=16)
  if source == "chexpert":
    fields = dict(finding="Pleural Effusion", uncertain="drop", frontal_only=True, val_fraction=0.25)
  else:
    fields = dict(layout="2020", val_fraction=0.25, test_fraction=0.25)
    config.num_channels = 3
  fields = dict(fields, manual_dir=str(manual_dir), split_lists="", split_seed=0)
  config[source] = ml_collections.ConfigDict({**fields, **options})
  pipeline.check_data_config(config)
  return config


def _load(config, split: str) -> tuple[dict[int, int], pipeline.Split]:
  """{image number: label} of a split, in its stored order, and the split."""
  loaded = pipeline.load_split(config, split)
  return dict(zip(fakes.image_numbers(loaded.images), loaded.labels.tolist(), strict=True)), loaded


def _patients(numbers: dict[str, int], kept) -> set[str]:
  paths = {number: path for path, number in numbers.items()}
  return {paths[number].split("/")[2] for number in kept}


@pytest.mark.parametrize("policy", ["drop", "positive", "negative"])
def test_chexpert_own_splits(tmp_path, policy):
  numbers = fakes.fake_chexpert(tmp_path / "manual")
  config = _data_config(tmp_path, "chexpert", tmp_path / "manual", uncertain=policy)
  train, loaded = _load(config, "train")
  assert loaded.images.shape == (len(train), 16, 16, 1) and loaded.images.dtype == np.uint8
  assert loaded.labels.dtype == np.int32 and loaded.skipped == ()
  val, _ = _load(config, "val")
  test, _ = _load(config, "test")
  assert test == _expected(fakes.CHEXPERT_VALID, "valid", numbers, policy)
  assert {**train, **val} == _expected(fakes.CHEXPERT_TRAIN, "train", numbers, policy)
  assert list(train) == sorted(train) and list(val) == sorted(val)  # CSV order within a split
  # A quarter of train.csv's 8 patients are drawn for val (those with kept rows show up); none is in two splits.
  assert 1 <= len(_patients(numbers, val)) <= 2 and not _patients(numbers, train) & _patients(numbers, val)


def test_chexpert_val_patients_follow_the_seed(tmp_path):
  numbers = fakes.fake_chexpert(tmp_path / "manual")
  val_patients = []
  for seed in (0, 0, 1):
    config = _data_config(tmp_path, "chexpert", tmp_path / "manual", split_seed=seed, uncertain="positive")
    val_patients.append(_patients(numbers, _load(config, "val")[0]))
  assert val_patients[0] == val_patients[1] != val_patients[2]


def test_chexpert_all_views_and_builder_config_names(tmp_path):
  numbers = fakes.fake_chexpert(tmp_path / "manual")
  config = _data_config(tmp_path, "chexpert", tmp_path / "manual", frontal_only=False)
  test, _ = _load(config, "test")
  lateral = numbers[fakes.chexpert_path("valid", 64542, 1, "lateral")]
  assert test == {**_expected(fakes.CHEXPERT_VALID, "valid", numbers, "drop"), lateral: 0}

  def name(**changes):
    options = {**config.chexpert.to_dict(), "image_size": 16, "on_bad_file": "stop", **changes}
    return ChexpertManual(**options, data_dir=tmp_path / "tfds").builder_config.name

  names = [name(), name(uncertain="positive"), name(image_size=32), name(val_fraction=0.5), name(on_bad_file="skip")]
  assert len(set(names)) == len(names) and name() == names[0]
  valid_csv = tmp_path / "manual" / "CheXpert-v1.0-small" / "valid.csv"
  valid_csv.write_text(valid_csv.read_text().replace("Female", "Male", 1))
  assert name() != names[0]  # the CSV content is part of the name too


def _fake_chexpert_lists(folder: pathlib.Path, numbers: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
  """Split lists in the original work's columns over the fake images; returns {split: [(number, label)]}."""
  chosen = {
    "train": [(fakes.chexpert_path("train", 7, 1, "frontal"), 1), (fakes.chexpert_path("train", 2, 2, "frontal"), 0)],
    "valid": [(fakes.chexpert_path("train", 1, 2, "frontal"), 1), (fakes.chexpert_path("train", 8, 1, "lateral"), 0)],
    "test": [
      (fakes.chexpert_path("valid", 64543, 1, "frontal"), 0),
      (fakes.chexpert_path("train", 3, 1, "frontal"), 1),
    ],
  }
  expected = {}
  for list_split, rows in chosen.items():
    columns = ("Path", "Pleural Effusion", "No Finding", "healthy_or_sick")
    records = [
      {"Path": path, "Pleural Effusion": f"{label:.1f}", "No Finding": f"{1 - label:.1f}"} for path, label in rows
    ]
    fakes.write_csv(folder / f"chexpert-{list_split}.csv", columns, [{**r, "healthy_or_sick": "true"} for r in records])
    expected["val" if list_split == "valid" else list_split] = [(numbers[path], label) for path, label in rows]
  return expected


def test_chexpert_split_lists_are_honoured_exactly(tmp_path):
  numbers = fakes.fake_chexpert(tmp_path / "manual")
  expected = _fake_chexpert_lists(tmp_path / "lists", numbers)
  # The full-size download folder: Paths naming CheXpert-v1.0-small resolve there too.
  (tmp_path / "manual" / "CheXpert-v1.0-small").rename(tmp_path / "manual" / "CheXpert-v1.0")
  config = _data_config(tmp_path, "chexpert", tmp_path / "manual", split_lists=str(tmp_path / "lists"))
  for split in ("train", "val", "test"):
    kept, loaded = _load(config, split)
    assert list(kept.items()) == expected[split] and loaded.images.shape[1:] == (16, 16, 1)


def _first_rows(name: str) -> list[dict[str, str]]:
  with open(SHIPPED_LISTS / name, newline="") as f:
    return list(csv.DictReader(f))


def test_shipped_split_lists(tmp_path):
  """The original work's lists load as they are: every listed file is read or (missing here) skipped."""
  assert sum(p.stat().st_size for p in SHIPPED_LISTS.iterdir()) < 3e6
  assert {p.name for p in SHIPPED_LISTS.iterdir()} >= {"README.md", "LICENSE"}
  manual, sizes = tmp_path / "manual", {"train": 16324, "val": 2040, "test": 2040}
  lists = {"train": "chexpert-train.csv", "val": "chexpert-valid.csv", "test": "chexpert-test.csv"}
  rows = {split: _first_rows(name) for split, name in lists.items()}
  for number, split in enumerate(lists):  # one image per split is there
    fakes.write_jpeg(manual / rows[split][0]["Path"], number, "L")
  config = _data_config(tmp_path, "chexpert", manual, split_lists=str(SHIPPED_LISTS))
  config.on_bad_file = "skip"
  for number, split in enumerate(lists):
    kept, loaded = _load(config, split)
    assert len(rows[split]) == sizes[split] and len(loaded.skipped) == sizes[split] - 1
    assert kept == {number: int(float(rows[split][0]["Pleural Effusion"]))}

  lists = {"train": "isic-train.csv", "val": "isic-valid.csv", "test": "isic-test.csv"}
  rows = {split: _first_rows(name) for split, name in lists.items()}
  old = next(row for row in rows["val"] if row["image_name"].endswith("_downsampled"))  # an ISIC 2019 file name
  present = {"train": [rows["train"][0]], "val": [old, rows["val"][-1]], "test": [rows["test"][0]]}
  fakes.write_jpeg(manual / "ISIC_2019_Training_Input" / f"{old['image_name']}.jpg", 0, "tinted")
  for number, row in enumerate([present["train"][0], present["val"][1], present["test"][0]], start=1):
    fakes.write_jpeg(manual / "train" / f"{row['image_name']}.jpg", number, "tinted")
  config = _data_config(tmp_path, "isic", manual, split_lists=str(SHIPPED_LISTS))
  config.on_bad_file = "skip"
  expected = {"train": {1: present["train"][0]}, "val": {0: old, 2: present["val"][1]}, "test": {3: present["test"][0]}}
  for split in lists:
    kept, loaded = _load(config, split)
    assert kept == {number: int(row["target"]) for number, row in expected[split].items()}
    assert len(loaded.skipped) == len(rows[split]) - len(kept) and loaded.images.shape[1:] == (16, 16, 3)


@pytest.mark.parametrize("layout", ["2020", "2019"])
def test_isic_stratified_splits(tmp_path, layout):
  labels = fakes.fake_isic(tmp_path / "manual", layout)
  config = _data_config(tmp_path, "isic", tmp_path / "manual", layout=layout)
  splits = {split: _load(config, split) for split in ("train", "val", "test")}
  # Per class a quarter (rounded half to even) in val and in test: melanoma 4 -> 1 + 1, other 6 -> 2 + 2.
  counts = {split: np.bincount(list(kept.values()), minlength=2).tolist() for split, (kept, _) in splits.items()}
  assert counts == {"train": [2, 2], "val": [2, 1], "test": [2, 1]}
  numbers = [number for kept, _ in splits.values() for number in kept]
  assert sorted(numbers) == list(range(10))  # every image in exactly one split
  for kept, loaded in splits.values():
    assert all(label == labels[number] for number, label in kept.items()) and list(kept) == sorted(kept)
    assert loaded.images.shape == (len(kept), 16, 16, 3) and loaded.images.dtype == np.uint8
    green = loaded.images[..., 1].reshape(len(kept), -1).mean(1)
    np.testing.assert_allclose(green, [255 - 16 - fakes.STEP * n for n in kept], atol=3)  # RGB kept
  again = _data_config(tmp_path / "again", "isic", tmp_path / "manual", layout=layout)
  assert _load(again, "test")[0] == splits["test"][0]  # deterministic


def test_isic_split_lists_are_honoured_exactly(tmp_path):
  fakes.fake_isic(tmp_path / "manual", "2020")
  names = [f"ISIC_{2637011 + number:07d}" for number in range(10)]
  chosen = {"train": [(4, 1), (0, 0), (9, 1)], "valid": [(7, 0)], "test": [(2, 1), (3, 0)]}  # labels from the lists
  for list_split, rows in chosen.items():
    records = [{"image_name": names[number], "target": label} for number, label in rows]
    fakes.write_csv(tmp_path / "lists" / f"isic-{list_split}.csv", ("image_name", "target"), records)
  config = _data_config(tmp_path, "isic", tmp_path / "manual", split_lists=str(tmp_path / "lists"))
  for split, list_split in (("train", "train"), ("val", "valid"), ("test", "test")):
    kept, _ = _load(config, split)
    assert list(kept.items()) == chosen[list_split]


def test_missing_and_unreadable_files(tmp_path):
  numbers = fakes.fake_chexpert(tmp_path / "manual")
  config = _data_config(tmp_path, "chexpert", tmp_path / "manual")
  missing = tmp_path / "manual" / fakes.chexpert_path("train", 4, 2, "frontal")
  missing.unlink()
  broken = tmp_path / "manual" / fakes.chexpert_path("train", 6, 1, "frontal")
  broken.write_bytes(broken.read_bytes()[:40])
  line = 2 + fakes.CHEXPERT_TRAIN.index((4, 2, "frontal", "", "1.0", 0, 0, 0))
  with pytest.raises(
    DataError, match=rf"{missing}: image file not found, listed in .*train.csv line {line}; pass"
  ) as e:
    pipeline.load_split(config, "train")
  assert "\n" not in str(e.value)
  config.on_bad_file = "skip"
  train, loaded = _load(config, "train")
  val, _ = _load(config, "val")
  expected = _expected(fakes.CHEXPERT_TRAIN, "train", numbers, "drop")
  bad = {numbers[p.relative_to(tmp_path / "manual").as_posix()] for p in (missing, broken)}
  assert {**train, **val} == {number: label for number, label in expected.items() if number not in bad}
  assert sorted(loaded.skipped + pipeline.load_split(config, "val").skipped) == sorted([str(missing), str(broken)])
  config.on_bad_file = "stop"
  missing.write_bytes(broken.read_bytes())
  with pytest.raises(DataError, match=r"unreadable image \(.*\), listed in") as e:
    pipeline.load_split(config, "train")
  assert "\n" not in str(e.value)
  for path in (tmp_path / "manual" / "CheXpert-v1.0-small" / "valid").rglob("*.jpg"):
    path.unlink()
  config.update(on_bad_file="skip", tfds_data_dir=str(tmp_path / "tfds_2"))
  with pytest.raises(DataError, match=r"manual: all 2 images of split 'test' are missing or unreadable \(.*64541"):
    pipeline.load_split(config, "train")


def test_missing_folders_and_csvs(tmp_path):
  for source, download in (("chexpert", "CheXpert-v1.0-small from https://stanford"), ("isic", "#2020 unpack")):
    config = _data_config(tmp_path, source, tmp_path / "nowhere")
    with pytest.raises(DataError, match=f"nowhere: folder not found; .*{download}.*into .*nowhere") as e:
      pipeline.load_split(config, "train")
    assert "\n" not in str(e.value)
  (tmp_path / "empty").mkdir()
  config = _data_config(tmp_path, "chexpert", tmp_path / "empty")
  with pytest.raises(DataError, match="empty: holds neither CheXpert-v1.0-small/ nor CheXpert-v1.0/"):
    pipeline.load_split(config, "train")
  fakes.fake_chexpert(tmp_path / "manual")
  (tmp_path / "manual" / "CheXpert-v1.0-small" / "valid.csv").unlink()
  config = _data_config(tmp_path, "chexpert", tmp_path / "manual")
  with pytest.raises(DataError, match=r"valid.csv: file not found; download CheXpert"):
    pipeline.load_split(config, "train")
  config = _data_config(tmp_path, "chexpert", tmp_path / "manual", split_lists=str(tmp_path / "nolists"))
  with pytest.raises(DataError, match=r"nolists/chexpert-train.csv: file not found; .*data/original_splits"):
    pipeline.load_split(config, "train")
  fakes.fake_isic(tmp_path / "isic", "2019")
  config = _data_config(tmp_path, "isic", tmp_path / "isic", layout="2020")
  with pytest.raises(DataError, match=r"isic/train: folder not found; .*ISIC_2020_Training_JPEG.zip"):
    pipeline.load_split(config, "train")


@pytest.mark.parametrize(
  "source, field, value, message",
  [
    ("chexpert", "finding", "No Finding", r"config.data.chexpert.finding='No Finding' is not one of"),
    ("chexpert", "uncertain", "ones", r"config.data.chexpert.uncertain='ones' is not one of"),
    ("chexpert", "val_fraction", 0.0, r"config.data.chexpert.val_fraction=0.0 must be between 0 and 1"),
    ("chexpert", "manual_dir", "", r"config.data.chexpert.manual_dir is empty"),
    ("isic", "layout", "2018", r"config.data.isic.layout='2018' is not one of"),
    ("isic", "test_fraction", 0.8, r"val_fraction \+ config.data.isic.test_fraction must be below 1"),
  ],
)
def test_config_errors(tmp_path, source, field, value, message):
  config = _data_config(tmp_path, source, tmp_path)
  config[source][field] = value
  with pytest.raises(ConfigError, match=message):
    pipeline.check_data_config(config)


def test_config_channels(tmp_path):
  config = _data_config(tmp_path, "isic", tmp_path)
  config.num_channels = 1
  with pytest.raises(ConfigError, match="config.data.num_channels=1; isic images have 3"):
    pipeline.check_data_config(config)
