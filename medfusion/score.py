r"""Scores a split with a trained diffusion classifier.

  python -m medfusion.score --config=configs/pneumoniamnist.py --workdir=W --split=val --output=OUT

Writes OUT/scores.csv (one row per image), OUT/metrics.json and OUT/risk_coverage.png. Started again with the
same arguments after an interruption, it continues where it stopped. `--config.data.npz=/path/file.npz` scores
any MedMNIST-layout file (e.g. the full download, whose test split is not bundled).
"""

import json

from absl import flags
from ml_collections import config_flags

from medfusion import cli, configcheck
from medfusion.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The config the model was trained with.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir (its best checkpoint is used) or a shipped model folder.")
flags.DEFINE_string("split", "val", "Split to score (train, val, test).")
flags.DEFINE_string("output", None, "Output folder.")
flags.DEFINE_integer("max_examples", 0, "Score only the first N images (0: all).")
flags.mark_flags_as_required(["config", "workdir", "output"])


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.setup(FLAGS.config)
  configcheck.check(FLAGS.config)  # before the heavy imports, so a bad field fails at once
  from medfusion import scoring

  result = scoring.score_split(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.output, FLAGS.max_examples)
  summary = {k: {m: round(result[k][m], 4) for m in ("accuracy", "auc", "ece")} for k in ("vote", "mean")}
  print(json.dumps({"n": result["n"], "nfe_per_image": result["nfe_per_image"], **summary}))


if __name__ == "__main__":
  cli.run(main)
