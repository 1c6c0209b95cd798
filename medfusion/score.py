r"""Scores a split with a trained diffusion classifier.

  python -m medfusion.score --config=configs/pneumoniamnist.py --workdir=W --split=val --output=OUT

Writes OUT/scores.csv (one row per image), OUT/metrics.json and OUT/risk_coverage.png. Started again with the
same arguments after an interruption, it continues where it stopped. `--config.data.npz=/path/file.npz` scores
any MedMNIST-layout file (e.g. the full download, whose test split is not bundled).
"""

import json

from absl import flags

from medfusion import cli

cli.define_config_flag("The config the model was trained with.")
flags.DEFINE_string("workdir", None, "Training workdir (its best checkpoint is used) or an exported model folder.")
flags.DEFINE_string("split", "val", "Split to score (train, val, test).")
flags.DEFINE_string("output", None, "Output folder.")
flags.DEFINE_integer("max_examples", 0, "Score only the first N images (0: all).")
flags.mark_flags_as_required(["config", "workdir", "output"])
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.evaluation import split_scoring

  result = split_scoring.score_split(config, FLAGS.workdir, FLAGS.split, FLAGS.output, FLAGS.max_examples)
  summary = {k: {m: round(result[k][m], 4) for m in ("accuracy", "auc", "ece")} for k in ("vote", "mean")}
  print(json.dumps({"n": result["n"], "nfe_per_image": result["nfe_per_image"], **summary}))


if __name__ == "__main__":
  cli.run(main)
