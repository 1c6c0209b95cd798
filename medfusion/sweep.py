r"""Accuracy against the number of draws (mean vs vote) and against the timestep of a draw, for one split.

  python -m medfusion.sweep --config=configs/pneumoniamnist.py --workdir=pretrained/pneumoniamnist --split=val \
      --output=OUT --config.classify.num_draws=64

Evaluates the first K = config.classify.num_draws draws of medfusion.score on every class once, then writes
OUT/errors.npz (errors [N, C, K], t [N, K], labels), OUT/sweep.json, OUT/k_sweep.png (accuracy of the mean and
vote aggregators on the first k = 1, 2, 4, ... K draws) and OUT/t_profile.png (accuracy of single draws in ten
bins of t: where the class signal lies; use it to choose config.classify.t_min / t_max).
"""

import json

import numpy as np
from absl import flags

from medfusion import cli

cli.define_config_flag("The config the model was trained with.")
flags.DEFINE_string("workdir", None, "Training workdir (its best checkpoint is used) or an exported model folder.")
flags.DEFINE_string("split", "val", "Split to evaluate.")
flags.DEFINE_string("output", None, "Output folder.")
flags.DEFINE_integer("max_examples", 0, "Only the first N images (0: all).")
flags.mark_flags_as_required(["config", "workdir", "output"])
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.evaluation import draw_analysis

  result = draw_analysis.sweep_split(config, FLAGS.workdir, FLAGS.split, FLAGS.output, FLAGS.max_examples)
  sweep = result["k_sweep"]
  print(
    json.dumps(
      {"k": sweep["k"], "mean": np.round(sweep["mean"], 4).tolist(), "vote": np.round(sweep["vote"], 4).tolist()}
    )
  )


if __name__ == "__main__":
  cli.run(main)
