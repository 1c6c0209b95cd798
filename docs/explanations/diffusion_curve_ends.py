"""Where the diffusion classifier's own deletion and insertion curves start and end, and their mean shape.

  python docs/explanations/diffusion_curve_ends.py pretrained/dermamnist OUT/explanations.npz [draws]

For the images of a `medfusion.explain` run (OUT/explanations.npz) and the model that explained them: the
classifier's vote share for its call on each image and on its fully removed version (the sigma 4 px blur the curves
reveal or remove pixels toward), the calls on the removed images, and the mean deletion and insertion curves of a
random pixel order (the curves' reference), all on `draws` draws (default 16). Prints JSON.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from medfusion import modeldir, stored_config  # noqa: E402
from medfusion.classify.classifier import DiffusionClassifier  # noqa: E402
from medfusion.explanations import evaluate, faithfulness, maps  # noqa: E402

STEPS = 10


def main(workdir: str, explained: str, draws: int = 16) -> dict:
  config = stored_config.get_config(workdir)
  config.classify.update(adaptive="none", prune_stages=())
  classifier = DiffusionClassifier(config, modeldir.load_ema_params(config, workdir).params)
  with np.load(explained) as f:
    images, indices, calls = f["images"], f["index"], f["prediction"]
  names = list(config.data.class_names)
  n = len(images)
  ends = evaluate.diffusion_probability(classifier, draws, np.concatenate([indices, indices]))(
    np.concatenate([images, faithfulness.removed(images)])
  )
  random = np.stack([maps.random_map(images.shape[1:3], i) for i in range(n)])
  probability = evaluate.diffusion_probability(classifier, draws, indices)
  curves = {
    mode: faithfulness.curves(probability, images, random, calls, STEPS, mode).mean(axis=0).round(3).tolist()
    for mode in faithfulness.MODES
  }
  removed_calls = ends[n:].argmax(axis=1)
  return {
    "n": n,
    "draws": draws,
    "share_of_call_image": float(ends[np.arange(n), calls].mean()),
    "share_of_call_removed": float(ends[n + np.arange(n), calls].mean()),
    "calls_on_removed": {names[k]: int(np.sum(removed_calls == k)) for k in np.unique(removed_calls)},
    "random_order_mean_curves": curves,
  }


def cli(argv=None) -> dict:
  """The command line: the model, the explain run's npz and the draws; a missing path is a one-line error."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdir", help="the model that explained the images (e.g. pretrained/dermamnist)")
  parser.add_argument("explained", help="the explanations.npz of a medfusion.explain run")
  parser.add_argument("draws", nargs="?", type=int, default=16, help="draws per vote share (default 16)")
  args = parser.parse_args(argv)
  for path in (args.workdir, args.explained):
    if not os.path.exists(path):
      raise SystemExit(f"error: {path} does not exist")
  if args.draws < 1:
    parser.error(f"draws={args.draws} must be positive")
  return main(args.workdir, args.explained, args.draws)


if __name__ == "__main__":
  print(json.dumps(cli(), indent=2))
