"""Maps per lesion kind on the first 64 test images (32 with a lesion) of synthetic_lesions, default and hard.

  python docs/explanations/hard_variant_baselines.py
  python docs/explanations/hard_variant_baselines.py OUT/explanations.npz

Without an argument: per variant and lesion kind, the mask-size precision and the pointing game (0 and 2 pixels) of
the bright-blob detector and of the intensity map (numpy only, a few seconds). With the explanations.npz of a
`medfusion.explain` run on the hard variant's test split: the same for every map in it.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from medfusion.data import synthetic_lesions  # noqa: E402
from medfusion.explanations import maps, scores  # noqa: E402


def _row(values, mask) -> list:
  return [scores.mask_size_precision(values, mask)] + [scores.pointing_game(values, mask, t) for t in (0, 2)]


def _print(variant: str, rows: dict) -> None:
  for (name, kind), values in sorted(rows.items()):
    precision, point0, point2 = np.mean(values, axis=0)
    head = f"{variant:8s} {name:34s} {kind:15s} n={len(values):2d}"
    print(f"{head} precision {precision:.2f} pointing {point0:.2f} / {point2:.2f}")


def model_free():
  for variant in synthetic_lesions.VARIANTS:
    rows = {}
    for index in range(1, 64, 2):
      image, mask, _ = synthetic_lesions.render("test", index, 32, variant)
      x = image.astype(np.float32) / 127.5 - 1.0
      kind = synthetic_lesions.hard_kind(index) if variant == "hard" else "bright"
      for name, values in (("blob", maps.blob(x)), ("intensity", maps.intensity(x))):
        row = _row(values, mask)
        rows.setdefault((name, kind), []).append(row)
        rows.setdefault((name, "all"), []).append(row)
    _print(variant, rows)


def explained(path: str):
  rows = {}
  with np.load(path) as f:
    for key in (k for k in f.files if k.startswith("map_")):
      for values, mask, index in zip(f[key], f["masks"], f["index"], strict=True):
        if mask.any():
          kind = synthetic_lesions.hard_kind(index)
          rows.setdefault((key.removeprefix("map_"), kind), []).append(_row(values, mask[..., 0] > 0))
  _print("hard", rows)


if __name__ == "__main__":
  explained(sys.argv[1]) if len(sys.argv) > 1 else model_free()
