"""Fakes shared by test files: tiny data files in the layouts the loaders read, and CLI error checks.

Every fake image of the CheXpert and ISIC layouts is one flat colour, distinct per file and kept through resizing,
so a loaded example's pixel value tells which file it came from (`image_numbers`).
"""

import csv
import pathlib

import numpy as np
from PIL import Image


def assert_one_line_error(proc, *fragments):
  """A CLI run that failed with status 2 and a one-line `error: ...` naming every fragment, no traceback."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), last
  for fragment in fragments:
    assert fragment in last, last


# --- MedMNIST-layout npz files -----------------------------------------------------------------------------------


def write_npz(path: pathlib.Path, **arrays) -> str:
  np.savez(path, **arrays)
  return str(path)


def fake_npz(path: pathlib.Path, n_train=12, n_test=7, shape=(20, 20, 3), num_classes=3) -> str:
  """A MedMNIST-layout npz of random images with train and test splits (labels cycle through the classes)."""
  rng = np.random.default_rng(0)
  return write_npz(
    path,
    train_images=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
    train_labels=np.arange(n_train) % num_classes,
    test_images=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
    test_labels=(np.arange(n_test) % num_classes)[:, None],
  )


# --- CheXpert and ISIC downloads in their official layouts -------------------------------------------------------

CHEXPERT_COLUMNS = (
  "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,"
  "Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
).split(",")
ISIC_2019_COLUMNS = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
SIZES = ((20, 24), (31, 17), (12, 12), (40, 33))  # (height, width) of the fake images, in turn
STEP = 8  # pixel values of successive fake images differ by this much


def write_csv(path: pathlib.Path, columns, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, restval="")
    writer.writeheader()
    writer.writerows(rows)


def write_jpeg(path: pathlib.Path, number: int, mode: str) -> int:
  """A flat JPEG whose (red) value identifies it, 'L', gray 'RGB' or coloured ('tinted'); returns that value."""
  path.parent.mkdir(parents=True, exist_ok=True)
  value = 16 + STEP * number
  colour = {"L": value, "RGB": (value,) * 3, "tinted": (value, 255 - value, 100)}[mode]
  pixels = np.full((*SIZES[number % len(SIZES)], 1 if mode == "L" else 3), colour, np.uint8)
  Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels).save(path, quality=95)
  return value


def image_numbers(images: np.ndarray) -> list[int]:
  """Which fake image each loaded image is, from its (first channel's) flat value."""
  values = images[..., 0].reshape(len(images), -1)
  assert (values.max(1) - values.min(1) <= 3).all()  # flat after resizing
  return np.round((values.mean(1) - 16) / STEP).astype(int).tolist()


# (patient, study, view, Pleural Effusion, No Finding, label with uncertain = drop / positive / negative); None: drop
CHEXPERT_TRAIN = (
  (1, 1, "frontal", "1.0", "", 1, 1, 1),
  (1, 1, "lateral", "1.0", "", None, None, None),
  (1, 2, "frontal", "-1.0", "", None, 1, None),
  (2, 1, "frontal", "", "1.0", 0, 0, 0),
  (2, 2, "frontal", "0.0", "", None, None, None),
  (3, 1, "frontal", "1.0", "", 1, 1, 1),
  (4, 1, "frontal", "", "1.0", 0, 0, 0),
  (4, 2, "frontal", "", "1.0", 0, 0, 0),
  (5, 1, "frontal", "-1.0", "1.0", None, None, 0),
  (6, 1, "frontal", "", "1.0", 0, 0, 0),
  (7, 1, "frontal", "1.0", "0.0", 1, 1, 1),
  (8, 1, "frontal", "", "1.0", 0, 0, 0),
  (8, 1, "lateral", "", "1.0", None, None, None),
)
CHEXPERT_VALID = (
  (64541, 1, "frontal", "1.0", "0.0", 1, 1, 1),
  (64542, 1, "frontal", "0.0", "1.0", 0, 0, 0),
  (64542, 1, "lateral", "0.0", "1.0", None, None, None),
  (64543, 1, "frontal", "0.0", "0.0", None, None, None),
)


def chexpert_path(csv_split: str, patient: int, study: int, view: str) -> str:
  view_file = "view1_frontal.jpg" if view == "frontal" else "view2_lateral.jpg"
  return f"CheXpert-v1.0-small/{csv_split}/patient{patient:05d}/study{study}/{view_file}"


def fake_chexpert(root: pathlib.Path) -> dict[str, int]:
  """CheXpert-v1.0-small with train.csv, valid.csv and their images; returns {Path: image number}."""
  numbers = {}
  for csv_split, table in (("train", CHEXPERT_TRAIN), ("valid", CHEXPERT_VALID)):
    rows = []
    for patient, study, view, effusion, no_finding, *_ in table:
      path = chexpert_path(csv_split, patient, study, view)
      numbers[path] = len(numbers)
      write_jpeg(root / path, numbers[path], "RGB" if numbers[path] % 3 == 0 else "L")  # RGB read as grayscale
      frontal = "Frontal" if view == "frontal" else "Lateral"
      row = {"Path": path, "Sex": "Female", "Age": "60", "Frontal/Lateral": frontal, "AP/PA": "AP"}
      rows.append({**row, "Pleural Effusion": effusion, "No Finding": no_finding, "Cardiomegaly": "-1.0"})
    write_csv(root / "CheXpert-v1.0-small" / f"{csv_split}.csv", CHEXPERT_COLUMNS, rows)
  return numbers


def fake_isic(root: pathlib.Path, layout: str, labels=(1, 0, 0, 1, 0, 0, 1, 0, 0, 1)) -> list[int]:
  """Ten RGB images in an ISIC layout; returns their labels (1 = melanoma) by image number."""
  rows = []
  for number, label in enumerate(labels):
    if layout == "2020":
      name = f"ISIC_{2637011 + number:07d}"
      write_jpeg(root / "train" / f"{name}.jpg", number, "tinted")
      rows.append({"image_name": name, "patient_id": f"IP_{number // 2}", "target": str(label)})
    else:
      name = f"ISIC_{number:07d}" + ("_downsampled" if number % 4 == 0 else "")
      write_jpeg(root / "ISIC_2019_Training_Input" / f"{name}.jpg", number, "tinted")
      rows.append({"image": name, **dict.fromkeys(ISIC_2019_COLUMNS[1:], "0.0"), "MEL" if label else "NV": "1.0"})
  if layout == "2020":
    write_csv(root / "train.csv", ("image_name", "patient_id", "target"), rows)
  else:
    write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ISIC_2019_COLUMNS, rows)
  return list(labels)
