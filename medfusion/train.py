r"""Trains the model a config describes: the class-conditional diffusion model, or the discriminative ResNet
baseline (configs/*_resnet.py).

  python -m medfusion.train --config=configs/pneumoniamnist.py --workdir=runs/pneumonia [--config.train.steps=2000]
  python -m medfusion.train --config=configs/pneumoniamnist_resnet.py --workdir=runs/pneumonia_resnet

Relaunching with the same workdir resumes from its newest checkpoint. Ctrl-C or SIGTERM finishes the current step,
saves a checkpoint and exits; a second one exits at once; during start-up (before the first step could be saved)
either ends the process at once. A finished ResNet run also writes metrics_val.json.
"""

from absl import flags

from medfusion import cli

cli.interrupts_end_start_up()  # until the loop's own handlers (save and exit) take over
cli.define_config_flag("Experiment config file (configs/X.py[:arg]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv, distributed=FLAGS.distributed)
  import jax

  from medfusion import models
  from medfusion.training import diffusion_trainer, loop, resnet_trainer

  diffusion = models.model_kind(config) == "diffusion"
  trainer = diffusion_trainer if diffusion else resnet_trainer
  state = trainer.train_and_evaluate(config, FLAGS.workdir)
  # not when stopped by an interrupt (the loop said how to resume); process 0 holds metrics.jsonl
  if int(state.step) >= config.train.steps and jax.process_index() == 0:
    print(loop.finished_summary(FLAGS.workdir, config.train.best_metric, config.data.eval_split, diffusion))


if __name__ == "__main__":
  cli.run(main)
