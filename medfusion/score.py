r"""Scores a split with a trained diffusion classifier (or a ResNet baseline: a workdir of configs/*_resnet.py).

  python -m medfusion.score --workdir=pretrained/pneumoniamnist --split=val --output=OUT

The model's own config (WORKDIR/config.json) is used unless --config is given; --config.x=v overrides a field.
Writes OUT/scores.csv (one row per image), OUT/metrics.json and OUT/risk_coverage.png. Started again with the
same arguments after an interruption, it continues where it stopped. `--config.data.npz=/path/file.npz` scores
any MedMNIST-layout file (e.g. the full download, whose test split is not bundled).
"""

import json

from absl import flags

from medfusion import cli

cli.define_model_flags()
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.evaluation import split_scoring

  result = split_scoring.score_split(config, FLAGS.workdir, FLAGS.split, FLAGS.output, FLAGS.max_examples)
  rows = [k for k in ("vote", "mean", "weighted", "softmax") if k in result]  # a ResNet has one row, softmax
  summary = {k: {m: round(result[k][m], 4) for m in ("accuracy", "auc", "ece")} for k in rows}
  print(json.dumps({k: result[k] for k in ("n", "nfe_per_image") if k in result} | summary))


if __name__ == "__main__":
  cli.run(main)
