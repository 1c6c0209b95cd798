r"""Class-conditional samples from pure noise with a trained diffusion model.

  python -m medfusion.sample --workdir=pretrained/pneumoniamnist --class=pneumonia --num=16 --output=OUT

Writes OUT/samples.png (a grid, a new row for each class) and OUT/samples.npz (samples [classes, num, H, W, C] in
[-1, 1], the class names and the settings). The sampler, number of steps and guidance weight are config.explain's
(`--config.explain.sampler=ddpm`, `--config.explain.steps=100`, `--config.explain.guidance=0`); the noise comes from
config.seed, so the same command draws the same samples and `--config.seed=1` other ones. Sample i of every class
starts from the same noise.
"""

import json

from absl import flags

from medfusion import cli

cli.define_model_flags(split=False)
flags.DEFINE_string("class", "", "Comma-separated class names to sample (default: every class; 'null': unconditional).")
flags.DEFINE_integer("num", 16, "Samples per class.", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.explanations import sampling

  settings = sampling.sample_classes(config, FLAGS.workdir, FLAGS["class"].value, FLAGS.num, FLAGS.output)
  print(json.dumps({k: settings[k] for k in ("classes", "num", "seed", "sampler", "steps", "guidance")}))


if __name__ == "__main__":
  cli.run(main)
