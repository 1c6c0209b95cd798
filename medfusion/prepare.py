r"""Writes a config's splits as arrays at the model resolution, for machines without TensorFlow.

  python -m medfusion.prepare --config=configs/pneumoniamnist.py --output=prepared/pneumoniamnist

writes OUTPUT/train.npz and OUTPUT/val.npz (uint8 images [N, S, S, C], int32 labels, lesion masks where the
source has them), exactly what medfusion.data.pipeline.load_split returns. Any command then reads them with
`--config.data.source=arrays --config.data.folder=OUTPUT`, which needs no TensorFlow (a lent GPU image, say).
"""

import os

from absl import flags

from medfusion import cli

cli.define_config_flag("Experiment config file (configs/X.py[:arg]).")
flags.DEFINE_string("output", None, "Folder for the <split>.npz files.")
flags.DEFINE_list("splits", None, "Splits to write (default: the config's train and eval splits).")
flags.mark_flags_as_required(["config", "output"])
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.data import pipeline
  from medfusion.writers import write_npz_atomic

  os.makedirs(FLAGS.output, exist_ok=True)
  for name in FLAGS.splits or (config.data.train_split, config.data.eval_split):
    split = pipeline.load_split(config.data, name)
    arrays = {"images": split.images, "labels": split.labels}
    if split.masks is not None:
      arrays["masks"] = split.masks
    path = os.path.join(FLAGS.output, f"{name}.npz")
    write_npz_atomic(path, **arrays)
    print(f"{name}: {len(split.labels)} images {split.images.shape[1:]} -> {path}")


if __name__ == "__main__":
  cli.run(main)
