r"""PneumoniaMNIST (the bundled 28x28 file, train and val splits), padded to 32x32.

  python -m medfusion.train --config=configs/pneumoniamnist.py --workdir=runs/pneumonia

`--config=configs/pneumoniamnist.py:smoke` trains a tiny model for a few steps.
"""

from configs import default


def get_config(arg: str = ""):
  """PneumoniaMNIST at 32x32; `arg` may be 'smoke'."""
  config = default.get_config()
  config.data.source = "npz"
  config.data.npz = default.BUNDLED_NPZ
  config.data.class_names = ("normal", "pneumonia")
  config.data.num_classes = 2
  config.data.num_channels = 1
  config.data.image_size = 32
  config.data.fit = "pad"
  config.data.eval_split = "val"
  if default.parse_arg(arg, smoke=False).smoke:
    default.smoke(config)
  return config
