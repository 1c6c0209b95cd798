r"""Trains the discriminative baseline (a ResNet with cross-entropy) on the diffusion model's data and metrics.

  python -m medfusion.baseline --config=configs/pneumoniamnist_resnet.py --workdir=runs/pneumonia_resnet

Relaunching with the same workdir resumes from its newest checkpoint; the finished run writes metrics_val.json.
"""

from absl import flags

from medfusion import cli

cli.define_config_flag("Experiment config file (configs/X_resnet.py[:arg]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv, distributed=FLAGS.distributed)
  from medfusion.training import resnet

  resnet.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
