r"""Trains a class-conditional diffusion model.

  python -m medfusion.train --config=configs/pneumoniamnist.py --workdir=runs/pneumonia [--config.train.steps=2000]

Relaunching with the same workdir resumes from its newest checkpoint. Ctrl-C or SIGTERM finishes the current step,
saves a checkpoint and exits; a second one exits at once.
"""

from absl import flags

from medfusion import cli

cli.define_config_flag("Experiment config file (configs/X.py[:arg]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv, distributed=FLAGS.distributed)
  from medfusion.training import diffusion

  diffusion.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
