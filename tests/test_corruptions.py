"""The MedMNIST-C corruptions: deterministic, uint8 of the input's shape, monotone in severity where the published
parameters are, and each one what its definition says on a hand-made image."""

import numpy as np
import pytest

from medfusion.data import augmentation
from medfusion.data import corruptions as C

ALL = [(dataset, name) for dataset in C.SETS for name in C.PARAMETERS[dataset]]
# Published parameters that grow the corruption with severity (mean absolute change on a 224 image). Not pixelate
# (box-filter aliasing makes its change non-monotone on a textured image) nor black_corner (its radii are not).
MONOTONE = [
  "jpeg_compression",
  "gaussian_noise",
  "speckle_noise",
  "impulse_noise",
  "shot_noise",
  "gaussian_blur",
  "defocus_blur",
  "zoom_blur",
  "brightness_up",
  "brightness_down",
  "contrast_up",
  "contrast_down",
  "gamma_up",
  "gamma_down",
]


def _texture(size: int, channels: int, seed: int = 0) -> np.ndarray:
  """A smooth random texture in the middle grey levels (no clipping at either end) with some fine detail."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(60, 190, (8, 8, channels))
  image = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
  return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("dataset", "name"), ALL)
def test_deterministic_shape_dtype_and_seeded(dataset, name):
  channels = 1 if dataset == "pneumoniamnist" else 3
  image = _texture(28, channels)
  corruption = C.Corruption(dataset, name, 3)
  first = C.corrupt(image, corruption, seed=0, index=5)
  assert first.dtype == np.uint8 and first.shape == image.shape
  np.testing.assert_array_equal(first, C.corrupt(image, corruption, seed=0, index=5))
  # a greyscale [H, W] image comes back [H, W]
  assert C.corrupt(image[..., 0], corruption, seed=0, index=5).shape == (28, 28)
  random = name.endswith("noise") or name in ("motion_blur", "characters")
  if random:  # another image index draws other noise
    other = C.corrupt_224(_texture(224, 3), corruption, seed=0, index=6)
    assert not np.array_equal(C.corrupt_224(_texture(224, 3), corruption, seed=0, index=5), other)


@pytest.mark.parametrize(("dataset", "name"), [(d, n) for d, n in ALL if n in MONOTONE])
def test_monotone_in_severity(dataset, name):
  image = _texture(224, 3)
  change = [
    np.abs(C.corrupt_224(image, C.Corruption(dataset, name, s), 0, 0).astype(float) - image).mean()
    for s in C.SEVERITIES
  ]
  assert change[0] > 0 and np.all(np.diff(change) > 0), change


def test_brightness_on_a_constant_image():
  image = np.full((224, 224, 3), 100, np.uint8)
  for severity, factor in zip(C.SEVERITIES, C.PARAMETERS["pneumoniamnist"]["brightness_up"], strict=True):
    out = C.corrupt_224(image, C.Corruption("pneumoniamnist", "brightness_up", severity), 0, 0)
    np.testing.assert_array_equal(out, round(100 * factor))
  bright = np.full((224, 224, 3), 250, np.uint8)
  np.testing.assert_array_equal(C.corrupt_224(bright, C.Corruption("dermamnist", "brightness_up", 5), 0, 0), 255)


def test_contrast_and_gamma_on_two_levels():
  image = np.zeros((224, 224, 3), np.uint8)
  image[:, :112], image[:, 112:] = 80, 160  # mean grey 120
  out = C.corrupt_224(image, C.Corruption("pneumoniamnist", "contrast_down", 5), 0, 0)  # factor 0.4
  np.testing.assert_array_equal(out[:, :112], 120 - 0.4 * 40)
  np.testing.assert_array_equal(out[:, 112:], 120 + 0.4 * 40)
  up = C.corrupt_224(image, C.Corruption("pneumoniamnist", "gamma_up", 5), 0, 0)  # exponent 1.6 darkens
  assert up[0, 0, 0] == int(255.999 * (80 / 255) ** 1.6) and up[0, -1, 0] == int(255.999 * (160 / 255) ** 1.6)


def test_pixelate_on_a_checkerboard_averages_cells():
  board = (np.indices((224, 224)).sum(axis=0) % 2 * 255).astype(np.uint8)  # one-pixel checkerboard
  image = np.repeat(board[..., None], 3, axis=2)
  out = C.corrupt_224(image, C.Corruption("dermamnist", "pixelate", 4), 0, 0)  # factor 0.3: 224 -> 67 -> 224
  assert out.std() < 0.2 * image.std()  # the checkerboard is averaged away
  assert abs(out.astype(float).mean() - 127.5) < 10


def test_black_corner_zeroes_the_corners_only():
  image = np.full((224, 224, 3), 200, np.uint8)
  out = C.corrupt_224(image, C.Corruption("dermamnist", "black_corner", 3), 0, 0)  # radius = half the width
  assert (out[:20, :20] == 0).all() and (out[-20:, -20:] == 0).all()
  assert (out[100:124, 100:124] == 200).all() and (out[112, 2] == 200).all()  # centre and mid-edge kept


def test_jpeg_round_trip_differs_within_bounds():
  image = _texture(224, 3)
  out = C.corrupt_224(image, C.Corruption("pneumoniamnist", "jpeg_compression", 5), 0, 0)
  change = np.abs(out.astype(float) - image)
  assert 0 < change.mean() < 20 and np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.8


def test_noises_match_their_statistics():
  image = np.full((224, 224, 3), 128, np.uint8)
  noisy = C.corrupt_224(image, C.Corruption("dermamnist", "gaussian_noise", 5), 0, 0) / 255.0  # sigma 0.26
  assert abs(noisy.std() - 0.26) < 0.02
  impulse = C.corrupt_224(image, C.Corruption("dermamnist", "impulse_noise", 5), 0, 0)  # 17 % salt or pepper
  assert abs(np.isin(impulse, (0, 255)).mean() - 0.17) < 0.01
  shot = C.corrupt_224(image, C.Corruption("dermamnist", "shot_noise", 5), 0, 0) / 255.0  # Poisson(x * 5) / 5
  assert set(np.unique(np.round(shot * 5))) <= set(range(6))


def test_motion_kernel_is_a_normalised_line():
  kernel = C.motion_kernel(10, 5, 0.0)
  assert abs(kernel.sum() - 1) < 1e-9 and np.count_nonzero(kernel) == 21
  rows, cols = np.nonzero(kernel)
  assert len(set(rows)) == 1 or len(set(cols)) == 1  # angle 0: one straight line of taps from the centre


def test_characters_draws_text_and_leaves_most_pixels():
  image = np.full((224, 224, 3), 128, np.uint8)
  out = C.corrupt_224(image, C.Corruption("dermamnist", "characters", 5), 0, 0)
  changed = (out != image).any(axis=2).mean()
  assert 0 < changed < 0.2


def test_protocol_keeps_28px_images_close_and_checks_arguments():
  image = _texture(28, 1)
  out = C.corrupt(image, C.Corruption("pneumoniamnist", "brightness_down", 1), 0, 0)  # factor 0.9
  assert abs(out.astype(float).mean() - 0.9 * image.mean()) < 3
  control = C.resample(image)  # the protocol's resampling alone: a slight smoothing
  assert (
    control.shape == image.shape and control.dtype == np.uint8 and 0 < np.abs(control - image.astype(float)).mean() < 8
  )
  with pytest.raises(ValueError, match="not in the pneumoniamnist set"):
    C.Corruption("pneumoniamnist", "characters", 1)
  with pytest.raises(ValueError, match="outside 1..5"):
    C.Corruption("dermamnist", "pixelate", 6)
  with pytest.raises(ValueError, match="expected a uint8 image"):
    C.corrupt(image.astype(np.float32), C.Corruption("pneumoniamnist", "pixelate", 1), 0, 0)


# --- corruptions and other augmentations in the training pipeline (config.data.augment) ------------------------------


def _split(channels: int = 1, n: int = 12):
  from medfusion.data import pipeline

  images = np.stack([_texture(32, channels, seed) for seed in range(n)])
  return pipeline.Split(images, np.arange(n, dtype=np.int32) % 2, None)


def _batches(split, augment, seed=0, start=0, steps=3, process_index=0, process_count=1):
  from medfusion.data import pipeline

  stream = pipeline.train_batches(split, 8, seed, start, process_index, process_count, augment)
  return [next(stream)["image"] for _ in range(steps)]


def test_augment_spec_parses_and_names_bad_terms():
  from medfusion.errors import ConfigError

  spec = augmentation.parse("flips+affine+intensity+corrupt:noise,blur")
  assert (spec.flips, spec.affine, spec.intensity, spec.corrupt) == ("flips", True, True, ("noise", "blur"))
  assert augmentation.parse("corrupt").corrupt == tuple(C.FAMILIES) and not augmentation.parse("none").extras
  for bad, match in (
    ("flips+rotate", "bad term 'rotate'"),
    ("flips+flips_rot90", "at most one"),
    ("corrupt:weather", "unknown corruption families"),
    ("affine:noise", "bad term"),
  ):
    with pytest.raises(ConfigError, match=match):
      augmentation.parse(bad)


@pytest.mark.parametrize("channels", [1, 3])
def test_augmented_batches_are_a_function_of_seed_and_position(channels):
  split, augment = _split(channels), "flips+affine+intensity+corrupt:noise,color,digital"
  reference = _batches(split, augment)
  for a, b in zip(reference, _batches(split, augment), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(_batches(split, augment, start=2, steps=1)[0], reference[2])  # resumed
  halves = [_batches(split, augment, process_index=p, process_count=2, steps=1)[0] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), reference[0])  # split over two processes
  assert not np.array_equal(_batches(split, augment, seed=1, steps=1)[0], reference[0])
  plain = _batches(split, "flips")
  assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(reference, plain, strict=True))
  assert all(-1 <= a.min() and a.max() <= 1 for a in reference)
  changed = np.mean([np.abs(a - b).mean(axis=(1, 2, 3)) > 0 for a, b in zip(reference, plain, strict=True)])
  assert changed > 0.9  # affine and intensity move every image


def test_each_augmentation_term_does_what_it_says():
  split = _split()
  images, positions = split.images[:8], np.arange(8)
  affine = augmentation.apply_extras(images, positions, 0, augmentation.Augment(affine=True))
  assert affine.dtype == np.uint8 and not np.array_equal(affine, images)
  assert (affine[:, 16, 16].astype(int) - images[:, 16, 16]).std() < 40  # small moves: the centre stays similar
  intensity = augmentation.apply_extras(images, positions, 0, augmentation.Augment(intensity=True))
  ratio = intensity.reshape(8, -1).mean(1) / images.reshape(8, -1).mean(1)
  assert np.all(np.abs(ratio - 1) <= 0.11) and not np.allclose(ratio, 1)
  many = np.repeat(images[:1], 200, axis=0)
  corrupted = augmentation.apply_extras(many, np.arange(200), 0, augmentation.Augment(corrupt=("color",)))
  share = np.mean(np.any(corrupted != many, axis=(1, 2, 3)))
  assert 0.35 < share < 0.65  # about half the images get a corruption
