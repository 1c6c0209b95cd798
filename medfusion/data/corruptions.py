"""The MedMNIST-C corruptions (Di Salvo et al. 2024, arXiv 2406.17536) as pure functions of the image.

Every corruption is a function of (image, seed, image index, corruption, severity): its randomness comes from
`numpy.random.default_rng((seed, index, corruption_id, severity))`, so a corrupted split is reproducible image by
image, whatever the batch or the order.

The severity parameters are those published in the `medmnistc` package's registry
(github.com/francescodisalvo05/medmnistc-api, medmnistc/corruptions/registry.py, commit b6dee0e), for
PneumoniaMNIST and DermaMNIST; each function re-implements its class in medmnistc/corruptions/{noise,compression,
filter,enhance,microscopy}.py with PIL, OpenCV, scikit-image and scipy (medmnistc itself needs PyTorch and ImageMagick,
so it is not a dependency). Where medmnistc calls ImageMagick (motion blur) the kernel is ImageMagick's
MotionBlurImage kernel written out (one-sided Gaussian weights along a line) and applied with OpenCV.

MedMNIST-C corrupts 224x224 images, converted to RGB first and, for greyscale datasets, back to greyscale after
(PIL 'L'). The protocol here for images of another size (MedMNIST's 28x28), fixed for every model and run:

1. upsample to 224x224 with PIL bicubic interpolation (greyscale images then become RGB, as in medmnistc);
2. corrupt with the published parameters of the dataset's set;
3. back to greyscale for greyscale input (PIL 'L'), then downsample to the input size with PIL's box filter
   (area averaging: an antialiased reduction, exact for the 8x of 28 <- 224).

The model then fits the result to its resolution as it fits clean images (config.data.fit). 224x224 input skips
steps 1 and 3's resize. Output is uint8 with the input's shape.
"""

import dataclasses
import io
import string

import cv2
import numpy as np
import scipy.ndimage
import skimage.util
from PIL import Image, ImageEnhance

PROTOCOL_SIZE = 224
PROTOCOL = (
  "upsample to 224 (PIL bicubic), corrupt as MedMNIST-C on RGB (published parameters), back to greyscale for "
  "greyscale input (PIL 'L'), downsample to the input size (PIL box filter: area averaging), then the model's fit"
)

# Every corruption, in a fixed order: a corruption's id (its position) seeds its randomness, so append only.
CORRUPTIONS = (
  "pixelate",
  "jpeg_compression",
  "gaussian_noise",
  "speckle_noise",
  "impulse_noise",
  "shot_noise",
  "gaussian_blur",
  "defocus_blur",
  "motion_blur",
  "zoom_blur",
  "brightness_up",
  "brightness_down",
  "contrast_up",
  "contrast_down",
  "gamma_up",
  "gamma_down",
  "black_corner",
  "characters",
)
SEVERITIES = (1, 2, 3, 4, 5)

# MedMNIST-C's families (medmnistc's CORRUPTIONS_DS_FOLDS; 'task' is its 'task-specific').
FAMILIES = {
  "digital": ("pixelate", "jpeg_compression"),
  "noise": ("gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise"),
  "blur": ("gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur"),
  "color": ("brightness_up", "brightness_down", "contrast_up", "contrast_down"),
  "task": ("gamma_up", "gamma_down", "black_corner", "characters"),
}

# The five severity parameters per dataset, from medmnistc/corruptions/registry.py (CORRUPTIONS_DS, commit b6dee0e).
# medmnistc names the gamma corruptions gamma_corr_up / gamma_corr_down. Its PneumoniaMNIST gaussian_blur lists six
# kernel sizes; severities 1-5 use the first five, as medmnistc does. Its DermaMNIST black_corner radii are not
# monotone in severity (1.10, 1.05, 1.00, 0.90, 0.95 of the half-width): kept as published.
PARAMETERS = {
  "pneumoniamnist": {
    "pixelate": (0.8, 0.7, 0.6, 0.5, 0.40),
    "jpeg_compression": (50, 30, 15, 10, 7),
    "gaussian_noise": (0.04, 0.05, 0.06, 0.07, 0.08),
    "speckle_noise": (0.05, 0.07, 0.10, 0.15, 0.20),
    "impulse_noise": (0.005, 0.01, 0.013, 0.017, 0.02),
    "shot_noise": (300, 200, 150, 100, 80),
    "gaussian_blur": (3, 5, 7, 9, 11),
    "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5),
    "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
    "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6),
    "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    "gamma_up": (1.1, 1.2, 1.3, 1.4, 1.6),
    "gamma_down": (0.9, 0.8, 0.7, 0.6, 0.4),
  },
  "dermamnist": {
    "pixelate": (0.7, 0.5, 0.40, 0.30, 0.25),
    "jpeg_compression": (30, 20, 15, 10, 7),
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),
    "speckle_noise": (0.05, 0.15, 0.2, 0.35, 0.45),
    "impulse_noise": (0.01, 0.03, 0.06, 0.09, 0.17),
    "shot_noise": (60, 25, 18, 10, 5),
    "defocus_blur": ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)),
    "motion_blur": ((10, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),  # np.arange
    "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5),
    "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
    "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6),
    "contrast_down": (0.8, 0.7, 0.6, 0.5, 0.4),
    "black_corner": (1.10, 1.05, 1.00, 0.90, 0.95),
    "characters": ((1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17), (6, 10, 0.18)),
  },
}
SETS = tuple(PARAMETERS)


def corruption_set(data_config) -> str:
  """The parameter set for a config.data: the dataset named in its npz file name, else by channels (greyscale:
  pneumoniamnist, RGB: dermamnist)."""
  name = str(data_config.get("npz", "")).lower() if data_config.source == "npz" else ""
  for dataset in SETS:
    if dataset in name:
      return dataset
  return "pneumoniamnist" if data_config.num_channels == 1 else "dermamnist"


def check(dataset: str, corruption: str, severity: int) -> None:
  """Raises ValueError naming the culprit for an unknown set, a corruption outside the set, or a bad severity."""
  if dataset not in PARAMETERS:
    raise ValueError(f"unknown corruption set {dataset!r}; choose from {SETS}")
  if corruption not in PARAMETERS[dataset]:
    raise ValueError(f"corruption {corruption!r} is not in the {dataset} set: {tuple(PARAMETERS[dataset])}")
  if severity not in SEVERITIES:
    raise ValueError(f"severity {severity!r} is outside 1..5")


def rng_for(seed: int, index: int, corruption: str, severity: int) -> np.random.Generator:
  """The generator of one (seed, image index, corruption, severity)."""
  return np.random.default_rng((int(seed), int(index), CORRUPTIONS.index(corruption), int(severity)))


# --- the corruptions on 224x224 RGB uint8 -------------------------------------------------------------------------


def _to_uint8_floor(x01: np.ndarray) -> np.ndarray:
  """[0, 1] floats to uint8 as medmnistc does: clipped, times 255, truncated."""
  return (np.clip(x01, 0.0, 1.0) * 255).astype(np.uint8)


def pixelate(img, factor, rng):
  """Box-filter down by `factor` and back up (PIL BOX both ways)."""
  del rng
  pil = Image.fromarray(img)
  w, h = pil.size
  small = pil.resize((int(w * factor), int(h * factor)), Image.BOX)
  return np.asarray(small.resize((w, h), Image.BOX))


def jpeg_compression(img, quality, rng):
  """A JPEG round trip at `quality` (PIL)."""
  del rng
  buffer = io.BytesIO()
  Image.fromarray(img).save(buffer, "JPEG", quality=int(quality))
  buffer.seek(0)
  return np.asarray(Image.open(buffer).convert(Image.fromarray(img).mode))


def gaussian_noise(img, scale, rng):
  """Additive Gaussian noise of standard deviation `scale` (images in [0, 1])."""
  x = img / 255.0
  return _to_uint8_floor(x + rng.normal(size=x.shape, scale=scale))


def speckle_noise(img, scale, rng):
  """Multiplicative Gaussian noise: x + x * n, n of standard deviation `scale`."""
  x = img / 255.0
  return _to_uint8_floor(x + x * rng.normal(size=x.shape, scale=scale))


def impulse_noise(img, amount, rng):
  """Salt-and-pepper noise on a share `amount` of the values (scikit-image's random_noise, mode 's&p')."""
  return _to_uint8_floor(skimage.util.random_noise(img / 255.0, mode="s&p", amount=amount, rng=rng))


def shot_noise(img, photons, rng):
  """Poisson noise: Poisson(x * photons) / photons."""
  x = img / 255.0
  return _to_uint8_floor(rng.poisson(x * photons) / photons)


def gaussian_blur(img, kernel, rng):
  """Gaussian blur with a `kernel`-pixel kernel and torchvision's default sigma 0.3 * ((k - 1) / 2 - 1) + 0.8, which
  is OpenCV's for sigma 0; reflected borders as torchvision's."""
  del rng
  return cv2.GaussianBlur(img, (int(kernel), int(kernel)), 0, borderType=cv2.BORDER_REFLECT_101)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
  """medmnistc's defocus kernel: a normalised disk on a grid of at least 17x17, lightly Gaussian-blurred."""
  if radius <= 8:
    coords, ksize = np.arange(-8, 8 + 1), (3, 3)
  else:
    coords, ksize = np.arange(-radius, radius + 1), (5, 5)
  x, y = np.meshgrid(coords, coords)
  disk = np.array((x**2 + y**2) <= radius**2, dtype=np.float32)
  disk /= np.sum(disk)
  return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def defocus_blur(img, radius_alias, rng):
  """Convolution with a disk of the given radius (OpenCV filter2D, per channel)."""
  del rng
  radius, alias = radius_alias
  x = img / 255.0
  kernel = _disk(radius, alias)
  out = np.stack([cv2.filter2D(x[:, :, c], -1, kernel) for c in range(x.shape[2])], axis=2)
  return _to_uint8_floor(out)


def motion_kernel(radius: float, sigma: float, angle: float) -> np.ndarray:
  """ImageMagick's MotionBlurImage kernel as a 2-D correlation kernel: 2 * ceil(radius) + 1 taps with weights
  exp(-i^2 / (2 sigma^2)) (normalised) at integer offsets along the direction `angle` (degrees) from the pixel."""
  width = int(2 * np.ceil(radius) + 1)
  taps = np.exp(-(np.arange(width) ** 2) / (2.0 * sigma**2))
  taps /= taps.sum()
  x, y = width * np.sin(np.deg2rad(angle + 90.0)), width * np.cos(np.deg2rad(angle + 90.0))
  norm = np.hypot(x, y)
  kernel = np.zeros((2 * width + 1, 2 * width + 1), np.float64)
  for i in range(width):
    dx, dy = int(np.ceil(i * y / norm - 0.5)), int(np.ceil(i * x / norm - 0.5))
    kernel[width + dy, width + dx] += taps[i]
  return kernel


def motion_blur(img, radius_sigma, rng):
  """ImageMagick's motion blur (`motion_kernel`) at an angle drawn uniformly in [-45, 45] degrees, edges repeated."""
  radius, sigma = radius_sigma
  kernel = motion_kernel(radius, sigma, rng.uniform(-45, 45))
  out = cv2.filter2D(img.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REPLICATE)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _clipped_zoom(img: np.ndarray, zoom: float) -> np.ndarray:
  """The centre of `img` zoomed by `zoom` (linear interpolation) and cropped to its size, as in medmnistc."""
  h = img.shape[0]
  ch = int(np.ceil(h / zoom))
  top = (h - ch) // 2
  out = scipy.ndimage.zoom(img[top : top + ch, top : top + ch], (zoom, zoom, 1), order=1)
  trim = (out.shape[0] - h) // 2
  return out[trim : trim + h, trim : trim + h]


def zoom_blur(img, arange, rng):
  """The mean of the image and its centre zoomed by each factor of np.arange(*arange)."""
  del rng
  x = (img / 255.0).astype(np.float32)
  zooms = np.arange(*arange)
  out = np.zeros_like(x)
  for zoom in zooms:
    out += _clipped_zoom(x, zoom)
  return _to_uint8_floor((x + out) / (len(zooms) + 1))


def brightness(img, factor, rng):
  """PIL's ImageEnhance.Brightness: every value times `factor`, clipped."""
  del rng
  return np.asarray(ImageEnhance.Brightness(Image.fromarray(img)).enhance(factor))


def contrast(img, factor, rng):
  """PIL's ImageEnhance.Contrast: blended with the image's mean grey by `factor`."""
  del rng
  return np.asarray(ImageEnhance.Contrast(Image.fromarray(img)).enhance(factor))


def gamma(img, exponent, rng):
  """torchvision's adjust_gamma on a PIL image (gain 1): the lookup table int(255.999 * (v / 255) ** exponent)."""
  del rng
  table = np.array([int((255 + 1 - 1e-3) * pow(v / 255.0, exponent)) for v in range(256)], np.uint8)
  return table[img]


def black_corner(img, multiplier, rng):
  """Zero outside a centred disk of radius `multiplier` times half the width (OpenCV's filled circle)."""
  del rng
  h, w = img.shape[:2]
  centre = (w // 2, h // 2)
  radius = min(centre[0], centre[1], w - centre[0], h - centre[1])
  circle = np.zeros((h, w), np.uint8)
  cv2.circle(circle, centre, int(radius * multiplier), 255, thickness=-1)
  out = img.copy()
  out[circle != 255] = 0
  return out


def characters(img, words_letters_scale, rng):
  """1 to `max_words` random lower-case words of 3 to `max_letters` letters in random colours (OpenCV's Hershey
  duplex font, anti-aliased) at random places and font scales 0.14 to `max_scale`."""
  max_words, max_letters, max_scale = words_letters_scale
  out = np.ascontiguousarray(img.copy())
  h, w = out.shape[:2]
  for _ in range(int(rng.integers(1, max_words, endpoint=True))):
    letters = int(rng.integers(3, max_letters, endpoint=True))
    scale = int(rng.integers(14, int(max_scale * 100), endpoint=True)) / 100.0
    text = "".join(rng.choice(list(string.ascii_lowercase), letters))
    origin = (int(rng.integers(10, w - 8 * letters, endpoint=True)), int(rng.integers(10, h - 10, endpoint=True)))
    colour = tuple(int(c) for c in rng.integers(0, 255, 3, endpoint=True))
    out = cv2.putText(out, text, origin, cv2.FONT_HERSHEY_DUPLEX, scale, colour, 1, cv2.LINE_AA)
  return out


FUNCTIONS = {
  "pixelate": pixelate,
  "jpeg_compression": jpeg_compression,
  "gaussian_noise": gaussian_noise,
  "speckle_noise": speckle_noise,
  "impulse_noise": impulse_noise,
  "shot_noise": shot_noise,
  "gaussian_blur": gaussian_blur,
  "defocus_blur": defocus_blur,
  "motion_blur": motion_blur,
  "zoom_blur": zoom_blur,
  "brightness_up": brightness,
  "brightness_down": brightness,
  "contrast_up": contrast,
  "contrast_down": contrast,
  "gamma_up": gamma,
  "gamma_down": gamma,
  "black_corner": black_corner,
  "characters": characters,
}


# --- the protocol --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corruption:
  """One corruption at one severity, from one parameter set."""

  dataset: str
  name: str
  severity: int

  def __post_init__(self):
    check(self.dataset, self.name, self.severity)

  @property
  def parameter(self):
    return PARAMETERS[self.dataset][self.name][self.severity - 1]


def corrupt_224(rgb: np.ndarray, corruption: Corruption, seed: int, index: int) -> np.ndarray:
  """One corruption of a 224x224x3 uint8 image, as MedMNIST-C applies it; uint8 of the same shape."""
  rng = rng_for(seed, index, corruption.name, corruption.severity)
  out = FUNCTIONS[corruption.name](np.ascontiguousarray(rgb), corruption.parameter, rng)
  return np.clip(out, 0, 255).astype(np.uint8)


def corrupt(image: np.ndarray, corruption: Corruption, seed: int, index: int) -> np.ndarray:
  """One image (uint8 [H, W] or [H, W, C], C = 1 or 3) corrupted under the module's protocol; same shape, uint8."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
    raise ValueError(f"expected a uint8 image [H, W] or [H, W, 1 or 3], got {image.dtype} {image.shape}")
  grey = image.ndim == 2 or image.shape[2] == 1
  pil = Image.fromarray(image.reshape(image.shape[:2]) if grey else image)
  size = pil.size
  if size != (PROTOCOL_SIZE, PROTOCOL_SIZE):
    pil = pil.resize((PROTOCOL_SIZE, PROTOCOL_SIZE), Image.BICUBIC)
  out = Image.fromarray(corrupt_224(np.asarray(pil.convert("RGB")), corruption, seed, index))
  if grey:
    out = out.convert("L")
  if out.size != size:
    out = out.resize(size, Image.BOX)
  return np.asarray(out).reshape(image.shape)


def resample(image: np.ndarray) -> np.ndarray:
  """The protocol without a corruption: up to 224 (bicubic) and back (box filter), greyscale kept; the control that
  separates a corruption's effect from the resampling's."""
  image = np.asarray(image)
  grey = image.ndim == 2 or image.shape[2] == 1
  pil = Image.fromarray(image.reshape(image.shape[:2]) if grey else image)
  if pil.size == (PROTOCOL_SIZE, PROTOCOL_SIZE):
    return image.copy()
  up = pil.resize((PROTOCOL_SIZE, PROTOCOL_SIZE), Image.BICUBIC)
  return np.asarray(up.resize(pil.size, Image.BOX)).reshape(image.shape)


def corrupt_images(images: np.ndarray, indices, corruption: Corruption, seed: int) -> np.ndarray:
  """Images [N, H, W, C] uint8, image i corrupted with index `indices[i]`; uint8 of the same shape."""
  return np.stack([corrupt(image, corruption, seed, index) for image, index in zip(images, indices, strict=True)])
