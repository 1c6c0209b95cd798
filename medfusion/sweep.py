r"""Accuracy against the number of draws (mean vs vote) and against the timestep of a draw, for one split.

  python -m medfusion.sweep --workdir=pretrained/pneumoniamnist --split=val --output=OUT \
      --config.classify.num_draws=64

Evaluates the first K = config.classify.num_draws draws of medfusion.score on every class once, then writes
OUT/errors.npz (errors [N, C, K], t [N, K], labels), OUT/sweep.json, OUT/k_sweep.png (accuracy of the mean and
vote aggregators on the first k = 1, 2, 4, ... K draws) and OUT/t_profile.png (accuracy of single draws in ten
bins of t: where the class signal lies; use it to choose config.classify.t_min / t_max) and OUT/early_stop.png
(accuracy against network evaluations per image of each early-stopping rule over delta, replayed on the same
draws). `--errors=OUT/errors.npz` redoes the analysis from stored draws without evaluating the model.
"""

import json

import numpy as np
from absl import flags

from medfusion import cli

cli.define_model_flags()
flags.DEFINE_string(
  "errors", "", "An errors.npz of an earlier sweep: analyse its draws instead of evaluating new ones."
)
flags.DEFINE_integer(
  "reorderings",
  100,
  "Replay the config's stopping rule on this many orders of each image's draws (0: skip).",
  lower_bound=0,
)
flags.DEFINE_bool(
  "store_weighting",
  False,
  "Fit config.classify.weighting on these draws and store it in the model folder (weighting.json).",
)
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.evaluation import draw_analysis

  result = draw_analysis.sweep_split(
    config,
    FLAGS.workdir,
    FLAGS.split,
    FLAGS.output,
    FLAGS.max_examples,
    errors_npz=FLAGS.errors,
    reorderings=FLAGS.reorderings,
    store_weighting=FLAGS.store_weighting,
  )
  sweep = result["k_sweep"]
  print(
    json.dumps(
      {"k": sweep["k"], "mean": np.round(sweep["mean"], 4).tolist(), "vote": np.round(sweep["vote"], 4).tolist()}
    )
  )


if __name__ == "__main__":
  cli.run(main)
