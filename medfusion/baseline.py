r"""Trains the discriminative baseline (a ResNet with cross-entropy) on the diffusion model's data and metrics.

  python -m medfusion.baseline --config=configs/pneumoniamnist_resnet.py --workdir=runs/pneumonia_resnet

Relaunching with the same workdir resumes from its newest checkpoint; the finished run writes metrics_val.json.
"""

import jax
from absl import flags
from ml_collections import config_flags

from medfusion import cli
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
  if FLAGS.distributed:
    jax.distributed.initialize()
  from medfusion import baseline_trainer

  baseline_trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
