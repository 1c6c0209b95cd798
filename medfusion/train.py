r"""Trains a class-conditional diffusion model.

  python -m medfusion.train --config=configs/pneumoniamnist.py --workdir=runs/pneumonia [--config.train.steps=2000]

Relaunching with the same workdir resumes from its newest checkpoint.
"""

import jax
from absl import flags
from ml_collections import config_flags

from medfusion import cli, configcheck
from medfusion.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/X.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.setup(FLAGS.config)
  configcheck.check(FLAGS.config)  # before the heavy imports, so a bad field fails at once
  if FLAGS.distributed:
    jax.distributed.initialize()
  from medfusion import trainer

  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
