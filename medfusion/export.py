r"""Exports a workdir's best EMA parameters (no optimizer state), calibration and config as a shippable model.

  python -m medfusion.export --config=configs/pneumoniamnist.py --workdir=runs/pneumonia \
      --output=pretrained/pneumoniamnist

The output folder works as `--workdir` for medfusion.score.
"""

from absl import flags
from ml_collections import config_flags

from medfusion import cli
from medfusion.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The config the model was trained with.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir.")
flags.DEFINE_string("output", None, "Folder for the exported model.")
flags.mark_flags_as_required(["config", "workdir", "output"])


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.setup(FLAGS.config)
  from medfusion import scoring

  step = scoring.export(FLAGS.config, FLAGS.workdir, FLAGS.output)
  print(f"exported step {step} of {FLAGS.workdir} to {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main)
