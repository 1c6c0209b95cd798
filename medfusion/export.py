r"""Exports a workdir's best model (EMA parameters; a ResNet's parameters and BatchNorm statistics; never optimizer
state), calibration and config as a shippable model.

  python -m medfusion.export --workdir=runs/pneumonia --output=pretrained/pneumoniamnist

The workdir's own config.json is used unless --config is given.

The output folder (with a SHA-256 manifest of its parameter files, checked at load) works as `--workdir` for
medfusion.score and medfusion.sweep.
"""

from absl import flags

from medfusion import cli

cli.define_model_flags(split=False)
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion import modeldir

  step = modeldir.export(config, FLAGS.workdir, FLAGS.output)
  print(f"exported step {step} of {FLAGS.workdir} to {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main)
