"""Class-conditional samples from pure noise (medfusion.sample): a grid PNG and the arrays.

Sample i of every class starts from the same noise (config.seed folded with i), so a row of the grid compares
classes on one noise draw.
"""

import math
import os

import jax
import numpy as np

from medfusion import modeldir, plots
from medfusion.errors import UserError
from medfusion.evaluation import split_runner
from medfusion.explanations import sampler as sampler_lib
from medfusion.writers import write_npz_atomic


def class_ids(spec: str, class_names) -> list[int]:
  """Comma-separated class names ('' for all; 'null' for the unconditional model) as label indices."""
  names = [n.strip() for n in spec.split(",") if n.strip()] or list(class_names)
  ids = []
  for name in names:
    if name == "null":
      ids.append(len(class_names))
    elif name in class_names:
      ids.append(list(class_names).index(name))
    else:
      raise UserError(f"--class={name!r} is not one of {(*class_names, 'null')}")
  return ids


def sample_classes(config, workdir: str, classes: str, num: int, output: str) -> dict:
  """`num` samples of each class in `classes` from pure noise: OUT/samples.png (one block of rows per class) and
  OUT/samples.npz (samples [classes, num, H, W, C] in [-1, 1], class names, settings). Returns the settings."""
  if num <= 0:
    raise UserError(f"--num={num} must be positive")
  names = [*config.data.class_names, "null"]
  ids = class_ids(classes, config.data.class_names)
  model = modeldir.load_ema_params(config, workdir)
  sampler = sampler_lib.Sampler(config, model.params)
  labels, indices = np.repeat(ids, num), np.tile(np.arange(num), len(ids))
  with split_runner.progress_bar(len(labels), "sample") as bar:
    images = sampler.sample(labels, indices, bar.update)
  images = images.reshape(len(ids), num, *images.shape[1:])
  spec = sampler.spec
  settings = {
    "classes": [names[i] for i in ids],
    "num": num,
    "seed": config.seed,
    "sampler": spec.sampler,
    "steps": spec.steps,
    "guidance": spec.guidance,
    "checkpoint": model.description,
  }
  if jax.process_index() == 0:
    os.makedirs(output, exist_ok=True)
    save_grid_png(os.path.join(output, "samples.png"), images, settings["classes"])
    write_npz_atomic(
      os.path.join(output, "samples.npz"),
      samples=images,
      classes=np.array(settings["classes"]),
      **{k: np.array(settings[k]) for k in ("seed", "sampler", "steps", "guidance")},
    )
  return settings


def grid(images: np.ndarray, columns: int = 8, border: int = 2) -> np.ndarray:
  """uint8 [rows, cols, C] grid of images [K, N, H, W, C] in [-1, 1]: each of the K groups starts a new row of up to
  `columns` images; images are separated by `border` white pixels."""
  k, n, h, w, c = images.shape
  columns = min(columns, n)
  rows_per_group = math.ceil(n / columns)
  out = np.full((k * rows_per_group * (h + border) + border, columns * (w + border) + border, c), 255, np.uint8)
  pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  for g in range(k):
    for i in range(n):
      r, col = g * rows_per_group + i // columns, i % columns
      top, left = border + r * (h + border), border + col * (w + border)
      out[top : top + h, left : left + w] = pixels[g, i]
  return out


def save_grid_png(path: str, images: np.ndarray, class_names) -> None:
  """`grid(images)` as a PNG (small images upscaled by an integer factor, nearest neighbour), each class's rows
  labelled with its name, written atomically."""
  pixels = grid(images)
  scale = max(1, 128 // images.shape[2])
  pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
  plots.save_labelled_grid_png(path, pixels, class_names)
