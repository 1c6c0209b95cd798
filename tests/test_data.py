"""Tests of the data sources (npz, synthetic lesions, image folders) and the input pipeline."""

import pathlib
import shutil

import fakes
import numpy as np
import pytest
from PIL import Image

from configs import default
from medfusion.data import image_folder, pipeline, synthetic_lesions
from medfusion.data.errors import DataError
from medfusion.data.medmnist import MedmnistNpz


def _data_config(tmp_path: pathlib.Path, **fields):
  config = default.get_config().data
  config.tfds_data_dir = str(tmp_path / "tfds")
  config.update(fields)
  return config


def _in_memory_split(num_examples: int) -> pipeline.Split:
  """A split whose image i is filled with the value i, so batches reveal which examples they hold."""
  ids = np.arange(num_examples)
  images = np.tile(ids.astype(np.uint8)[:, None, None, None], (1, 4, 4, 1))
  return pipeline.Split(images, (ids % 2).astype(np.int32), None)


def _example_ids(batch: dict) -> np.ndarray:
  return np.round((batch["image"][:, 0, 0, 0] + 1.0) * 127.5).astype(int)


def _take(iterator, count: int) -> list[dict]:
  return [next(iterator) for _ in range(count)]


def _check_batches(split: pipeline.Split, size: int, channels: int):
  batch = next(pipeline.train_batches(split, 8, seed=0))
  assert batch["image"].shape == (8, size, size, channels) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  batches = list(pipeline.eval_batches(split, 5))
  assert len(batches) == -(-len(split.labels) // 5)
  for batch in batches:
    assert batch["image"].shape == (5, size, size, channels) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32 and batch["valid"].dtype == bool
  assert sum(b["valid"].sum() for b in batches) == len(split.labels)


def test_bundled_npz(tmp_path):
  config = _data_config(tmp_path)
  split = pipeline.load_split(config, "train")
  raw = np.load(default.BUNDLED_NPZ)
  assert split.images.shape == (4707, 32, 32, 1) and split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32 and np.bincount(split.labels).tolist() == [1213, 3494]
  np.testing.assert_array_equal(split.images[:, 2:30, 2:30, 0], raw["train_images"])  # centred padding
  assert not split.images[:, :2].any() and not split.images[:, 30:].any()
  assert split.masks is None and split.skipped == ()
  _check_batches(split, 32, 1)
  val = pipeline.load_split(config, "val")
  assert val.images.shape == (524, 32, 32, 1) and np.bincount(val.labels).tolist() == [135, 389]
  with pytest.raises(DataError, match=r"pneumoniamnist_28.npz: no split 'test' \(it has train, val\).*medmnist.com"):
    pipeline.load_split(config, "test")


def test_npz_rgb_with_test_split_resized(tmp_path):
  npz = fakes.fake_npz(tmp_path / "fake.npz")
  config = _data_config(tmp_path, npz=npz, num_classes=3, num_channels=3, image_size=16, fit="resize")
  split = pipeline.load_split(config, "test")
  assert split.images.shape == (7, 16, 16, 3) and split.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
  _check_batches(split, 16, 3)
  config.num_channels = 1
  with pytest.raises(DataError, match="3 channel"):
    pipeline.load_split(config, "train")
  config.update(num_channels=3, fit="pad")
  with pytest.raises(DataError, match="20x20, larger than config.data.image_size=16"):
    pipeline.load_split(config, "train")


def test_npz_config_name_follows_content(tmp_path):
  (tmp_path / "b").mkdir()
  first = MedmnistNpz(npz_path=fakes.fake_npz(tmp_path / "a.npz"), num_classes=3, data_dir=tmp_path)
  same_stem = fakes.fake_npz(tmp_path / "b" / "a.npz", n_train=13)
  second = MedmnistNpz(npz_path=same_stem, num_classes=3, data_dir=tmp_path)
  assert first.builder_config.name.startswith("a_")
  assert first.builder_config.name != second.builder_config.name


_IMAGES = np.zeros((4, 28, 28), np.uint8)
_LABELS = np.zeros((4, 1), np.uint8)


@pytest.mark.parametrize(
  "arrays, message",
  [
    (dict(train_images=_IMAGES), "has 'train_images' but no 'train_labels'"),
    (dict(train_labels=_LABELS), "has 'train_labels' but no 'train_images'"),
    (dict(test_images=_IMAGES), "has 'test_images' but no 'test_labels'"),
    (dict(other=_IMAGES), "no split found"),
    (
      dict(train_images=_IMAGES, train_labels=_LABELS[:3]),
      "'train_images' holds 4 images but 'train_labels' 3",
    ),
    (dict(train_images=_IMAGES.astype(np.float32), train_labels=_LABELS), "'train_images' has dtype float32"),
    (
      dict(train_images=_IMAGES[..., None].repeat(2, -1), train_labels=_LABELS),
      r"'train_images' has shape \(4, 28",
    ),
    (dict(train_images=_IMAGES, train_labels=_LABELS.reshape(2, 2)), r"'train_labels' has shape \(2, 2\)"),
    (
      dict(train_images=_IMAGES, train_labels=_LABELS + 2),
      r"'train_labels' holds 2, expected labels in \[0, 2\)",
    ),
    (dict(train_images=_IMAGES[:0], train_labels=_LABELS[:0]), "split 'train' is empty"),
  ],
)
def test_npz_errors(tmp_path, arrays, message):
  npz = fakes.write_npz(tmp_path / "bad.npz", **arrays)
  with pytest.raises(DataError, match=message) as error:
    pipeline.load_split(_data_config(tmp_path, npz=npz), "train")
  assert "bad.npz" in str(error.value) and "\n" not in str(error.value)


def test_npz_missing_or_not_npz(tmp_path):
  with pytest.raises(DataError, match="missing.npz: file not found"):
    pipeline.load_split(_data_config(tmp_path, npz=str(tmp_path / "missing.npz")), "train")
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(DataError, match="text.npz: not a readable .npz"):
    pipeline.load_split(_data_config(tmp_path, npz=str(tmp_path / "text.npz")), "train")


def test_synthetic_lesions_smoke(tmp_path):
  config = _data_config(
    tmp_path, source="synthetic_lesions", synthetic_config="smoke", class_names=synthetic_lesions.CLASS_NAMES
  )
  split = pipeline.load_split(config, "val")
  assert split.images.shape == (64, 32, 32, 1) and split.masks.shape == (64, 32, 32, 1)
  assert split.masks.dtype == np.uint8 and np.bincount(split.labels).tolist() == [32, 32]
  lesion = split.labels == 1
  assert not split.masks[~lesion].any() and split.masks[lesion].reshape(32, -1).sum(1).min() >= 6
  # The lesion is a visible bright blob: far brighter than the rest of its image.
  images, masks = split.images[lesion].astype(float), split.masks[lesion].astype(bool)
  inside = [image[mask].mean() - image[~mask].mean() for image, mask in zip(images, masks, strict=True)]
  assert min(inside) > 40
  image, mask, label = synthetic_lesions.render("val", 5, 32)
  np.testing.assert_array_equal(split.images[5], image)
  np.testing.assert_array_equal(split.masks[5], mask)
  assert split.labels[5] == label
  assert not np.array_equal(synthetic_lesions.render("train", 5, 32)[0], image)
  _check_batches(split, 32, 1)


def test_train_batches_follow_the_documented_order():
  split, seed, batch_size = _in_memory_split(10), 3, 4
  batches = _take(pipeline.train_batches(split, batch_size, seed), 6)
  ids = np.concatenate([_example_ids(b) for b in batches])
  expected = [int(pipeline.epoch_order(10, seed, i // 10)[i % 10]) for i in range(len(batches) * batch_size)]
  assert ids.tolist() == expected
  first_epoch, second_epoch = ids[:10].tolist(), ids[10:20].tolist()
  assert sorted(first_epoch) == sorted(second_epoch) == list(range(10)) and first_epoch != second_epoch
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), ids % 2)


def test_train_batches_resume_and_determinism():
  split = _in_memory_split(10)
  reference = [_example_ids(b) for b in _take(pipeline.train_batches(split, 4, seed=0), 8)]
  again = [_example_ids(b) for b in _take(pipeline.train_batches(split, 4, seed=0), 8)]
  other = [_example_ids(b) for b in _take(pipeline.train_batches(split, 4, seed=1), 8)]
  np.testing.assert_array_equal(reference, again)
  assert not np.array_equal(reference, other)
  for start in (1, 5):
    resumed = _take(pipeline.train_batches(split, 4, seed=0, start_step=start), 8 - start)
    np.testing.assert_array_equal([_example_ids(b) for b in resumed], reference[start:])


def test_train_batches_process_slices_make_the_global_batch():
  split = _in_memory_split(10)
  global_batches = _take(pipeline.train_batches(split, 6, seed=2, start_step=3), 3)
  slices = [_take(pipeline.train_batches(split, 6, 2, 3, p, process_count=3), 3) for p in range(3)]
  for step, global_batch in enumerate(global_batches):
    for key in ("image", "label"):
      parts = [slices[p][step][key] for p in range(3)]
      assert parts[0].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate(parts), global_batch[key])
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.train_batches(split, 6, seed=0, process_count=4)


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
  """The 8 flips and 90-degree rotations of a square [S, S, C] image."""
  rotations = [np.rot90(image, k) for k in range(4)]
  return rotations + [r[:, ::-1] for r in rotations]


def test_augmentation_is_the_dihedral_group_and_keeps_order_and_labels():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
  split = pipeline.Split(images, np.arange(10, dtype=np.int32), None)
  plain = _take(pipeline.train_batches(split, 5, seed=3), 4)
  for augment, group_size in (("flips", 4), ("flips_rot90", 8)):
    augmented = _take(pipeline.train_batches(split, 5, seed=3, augment=augment), 4)
    seen = set()
    for before, after in zip(plain, augmented, strict=True):
      np.testing.assert_array_equal(before["label"], after["label"])  # same examples in the same order
      for original, image in zip(before["image"], after["image"], strict=True):
        matches = [i for i, t in enumerate(_dihedral(original)) if np.array_equal(t, image)]
        assert matches, f"{augment}: an augmented image is not a flip or rotation of its example"
        seen.add(matches[0])
    allowed = {0, 2, 4, 6} if augment == "flips" else set(range(8))  # flips: identity, rot180 and the two mirrors
    assert seen <= allowed and len(seen) >= group_size - 1
    again = _take(pipeline.train_batches(split, 5, seed=3, augment=augment), 4)
    resumed = _take(pipeline.train_batches(split, 5, seed=3, start_step=2, augment=augment), 2)
    for a, b in zip(augmented, again, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(augmented[2:], resumed, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
  other_seed = _take(pipeline.train_batches(split, 5, seed=4, augment="flips_rot90"), 4)
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(augmented, other_seed, strict=True))
  with pytest.raises(ValueError, match="augment='rot45'"):
    pipeline.train_batches(split, 5, seed=0, augment="rot45")


def test_eval_batches_pad_the_last_batch():
  split = _in_memory_split(10)
  batches = list(pipeline.eval_batches(split, 4, start=1, stop=8))
  assert [b["index"].tolist() for b in batches] == [[1, 2, 3, 4], [5, 6, 7, -1]]
  assert batches[1]["valid"].tolist() == [True, True, True, False]
  assert _example_ids(batches[1])[:3].tolist() == [5, 6, 7] and not batches[1]["image"][3].any()
  assert batches[1]["label"].tolist() == [1, 0, 1, 0]
  tail = list(pipeline.eval_batches(split, 8, start=4))
  assert [b["index"].tolist() for b in tail] == [[4, 5, 6, 7, 8, 9, -1, -1]]


def _image_folder(root: pathlib.Path, classes=("cat", "dog"), splits=("train", "val")) -> pathlib.Path:
  """Two tiny images per class and split: one RGB 12x12, one grayscale 10x14."""
  for split in splits:
    for label, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True)
      Image.fromarray(np.full((12, 12, 3), 100 + label, np.uint8)).save(folder / "a.png")
      Image.fromarray(np.full((10, 14), 50 + label, np.uint8)).save(folder / "b.jpg")
  return root


def _folder_config(tmp_path, root, **fields):
  fields = {"class_names": (), "image_size": 16, **fields}
  return _data_config(tmp_path, source="image_folder", folder=str(root), **fields)


def test_image_folder(tmp_path):
  root = _image_folder(tmp_path / "images")
  split = pipeline.load_split(_folder_config(tmp_path, root), "train")
  assert split.images.shape == (4, 16, 16, 1) and split.labels.tolist() == [0, 0, 1, 1]
  assert split.masks is None and split.skipped == ()
  assert split.images[0, 2, 2, 0] == 100 and split.images[0, 0, 0, 0] == 0  # RGB -> L, padded
  _check_batches(split, 16, 1)
  rgb = pipeline.load_split(_folder_config(tmp_path, root, num_channels=3, fit="resize"), "val")
  assert rgb.images.shape == (4, 16, 16, 3) and rgb.images.min() >= 49
  named = pipeline.load_split(_folder_config(tmp_path, root, class_names=("dog", "cat")), "val")
  assert named.labels.tolist() == [1, 1, 0, 0]  # labels follow config.data.class_names


def test_image_folder_reads_wide_images_and_dicom(tmp_path):
  """16-bit and float files are stretched from their own minimum to maximum; NaN makes a file bad; DICOM goes
  through its rescale (CT), window (MR) and photometric interpretation; multi-frame and palette DICOMs are refused."""
  from pydicom.data import get_testdata_file

  root = _image_folder(tmp_path / "images", splits=("train",))
  ramp = np.arange(16 * 16).reshape(16, 16)
  twelve_bit = (ramp * 4095 // ramp.max()).astype(np.uint16)  # a 12-bit X-ray exported as 16-bit PNG
  Image.fromarray(twelve_bit).save(root / "train" / "cat" / "c.png")
  Image.fromarray((ramp / ramp.max()).astype(np.float32), "F").save(root / "train" / "dog" / "c.tif")
  for name in ("CT_small.dcm", "MR_small.dcm"):
    shutil.copy(get_testdata_file(name), root / "train" / "dog" / name)
  images = image_folder.read_split(str(root), "train", 1, ("cat", "dog"), "stop").images
  # sorted per class: cat a.png, b.jpg, c.png; dog CT_small.dcm, MR_small.dcm, a.png, b.jpg, c.tif
  sixteen, floats, ct = images[2], images[7], images[3]
  assert sixteen.min() == 0 and sixteen.max() == 255 and 120 < sixteen.mean() < 135  # not 94 % white
  assert floats.min() == 0 and floats.max() == 255 and 120 < floats.mean() < 135  # not all black
  assert ct.shape == (128, 128, 1) and ct.min() == 0 and ct.max() == 255

  import pydicom

  mono1 = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
  mono1.PhotometricInterpretation = "MONOCHROME1"
  mono1.save_as(root / "train" / "dog" / "MR_small_inverted.dcm")
  folder = image_folder.read_split(str(root), "train", 1, ("cat", "dog"), "stop")
  mr, inverted = folder.images[4], folder.images[5]
  np.testing.assert_array_equal(inverted.astype(int), 255 - mr.astype(int))
  window = mono1.WindowCenter, mono1.WindowWidth  # MR_small's window is narrower than its values: some clip
  assert (mr == 255).mean() > 0.01 and window

  nan = (ramp / ramp.max()).astype(np.float32)
  nan[3, 3] = np.nan
  Image.fromarray(nan, "F").save(root / "train" / "cat" / "nan.tif")
  with pytest.raises(DataError, match=r"nan.tif: .*PIL mode F: 1 NaN or infinite pixel values"):
    image_folder.read_split(str(root), "train", 1, ("cat", "dog"), "stop")
  (root / "train" / "cat" / "nan.tif").unlink()
  for name, message in (("SC_rgb_rle_2frame.dcm", "multi-frame DICOM"), ("examples_palette.dcm", "palette-colour")):
    shutil.copy(get_testdata_file(name), root / "train" / "cat" / name)
    with pytest.raises(DataError, match=f"{name}: .*{message}"):
      image_folder.read_split(str(root), "train", 1, ("cat", "dog"), "stop")
    (root / "train" / "cat" / name).unlink()


def test_image_folder_bad_files(tmp_path):
  root = _image_folder(tmp_path / "images")
  (root / "train" / "cat" / "empty.png").touch()
  truncated = (root / "train" / "dog" / "a.png").read_bytes()
  (root / "train" / "dog" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
  with pytest.raises(DataError, match="empty.png: unreadable image"):
    pipeline.load_split(_folder_config(tmp_path, root), "train")
  split = pipeline.load_split(_folder_config(tmp_path, root, on_bad_file="skip"), "train")
  assert split.images.shape[0] == 4
  assert sorted(pathlib.Path(p).name for p in split.skipped) == ["cut.png", "empty.png"]
  (root / "train" / "cat" / "empty.png").unlink()
  with pytest.raises(DataError, match="cut.png: unreadable image"):
    pipeline.load_split(_folder_config(tmp_path, root), "train")


def test_image_folder_errors(tmp_path):
  with pytest.raises(DataError, match="nowhere: image folder does not exist"):
    pipeline.load_split(_folder_config(tmp_path, tmp_path / "nowhere"), "train")
  root = _image_folder(tmp_path / "images", splits=("train",))
  with pytest.raises(DataError, match=r"val: split folder missing; available splits: \['train'\]"):
    pipeline.load_split(_folder_config(tmp_path, root), "val")
  with pytest.raises(DataError, match=r"class folders \['cat', 'dog'\] do not match.*\['bird', 'cat'\]"):
    pipeline.load_split(_folder_config(tmp_path, root, class_names=("cat", "bird")), "train")
  (root / "train" / "fish").mkdir()
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "train" / "fish" / "a.png")
  with pytest.raises(DataError, match="label 2 >= config.data.num_classes=2"):
    pipeline.load_split(_folder_config(tmp_path, root), "train")
  (root / "train" / "fish" / "a.png").unlink()
  with pytest.raises(DataError, match="fish: no images"):
    pipeline.load_split(_folder_config(tmp_path, root, num_classes=3), "train")
  single = _image_folder(tmp_path / "single", classes=("cat",))
  with pytest.raises(DataError, match=r"single: found classes \['cat'\].*at least two"):
    pipeline.load_split(_folder_config(tmp_path, single), "train")
  big = _image_folder(tmp_path / "big")
  Image.fromarray(np.zeros((20, 8), np.uint8)).save(big / "train" / "cat" / "tall.png")
  with pytest.raises(DataError, match="tall.png: images are 20x8, larger than"):
    pipeline.load_split(_folder_config(tmp_path, big), "train")


def test_prepared_arrays_load_without_tensorflow(tmp_path, tfds_dir):
  """medfusion.prepare writes a split as load_split returns it; source=arrays reads it back with TF blocked."""
  from conftest import run_python

  out = tmp_path / "prepared"
  run_python(
    [
      "-m",
      "medfusion.prepare",
      "--config=configs/synthetic_lesions.py:smoke",
      f"--config.data.tfds_data_dir={tfds_dir}",
      f"--output={out}",
      "--splits=val",
    ]
  )
  config = _data_config(tmp_path, source="synthetic_lesions", synthetic_config="smoke")
  config.tfds_data_dir = tfds_dir
  original = pipeline.load_split(config, "val")
  script = f"""
import sys
sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None
import numpy as np
from configs import default
from medfusion.data import pipeline
config = default.get_config().data
config.update(source="arrays", folder={str(out)!r})
split = pipeline.load_split(config, "val")
batch = next(pipeline.train_batches(split, 8, seed=0))
np.savez({str(tmp_path / "read.npz")!r}, images=split.images, labels=split.labels, masks=split.masks)
"""
  run_python(["-c", script])
  read = np.load(tmp_path / "read.npz")
  for name in ("images", "labels", "masks"):
    np.testing.assert_array_equal(read[name], getattr(original, name))

  arrays = _data_config(tmp_path, source="arrays", folder=str(out))
  with pytest.raises(DataError, match=r"train\.npz: cannot read"):
    pipeline.load_split(arrays, "train")
  arrays.image_size = 28
  with pytest.raises(DataError, match=r"val\.npz: images are uint8 \(64, 32, 32, 1\).*expected uint8"):
    pipeline.load_split(arrays, "val")
  fakes.write_npz(out / "other.npz", x=np.zeros(3))
  with pytest.raises(DataError, match=r"other\.npz: holds \['x'\]"):
    pipeline.load_split(arrays, "other")
