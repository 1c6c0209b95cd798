r"""ISIC melanoma against the rest, as Favero et al. 2025 ran it: their train/valid/test lists (data/original_splits,
which mix ISIC 2019 and 2020 images), 256x256 RGB, the original UNet on the one-level Haar wavelet input and the
training and classification settings of configs/chexpert.py.

  python -m medfusion.train --config=configs/isic.py --workdir=runs/isic \
      --config.data.isic.manual_dir=/data/isic   # holds train/ + train.csv (2020) and ISIC_2019_Training_Input/

`:dit` trains DiT-B/4 instead; `:smoke` a tiny model on the builder's own stratified splits.
"""

import ml_collections

from configs import default


def get_config(arg: str = ""):
  """ISIC at 256x256; `arg` may hold smoke and dit (or model=<preset>)."""
  args = default.parse_arg(arg, smoke=False, dit=False, model="original_unet")
  if args.dit:
    args.model = "dit"
  config = default.get_config()
  config.data.source = "isic"
  default.set_classes(config, ("other", "melanoma"))
  config.data.num_channels = 3
  config.data.eval_split = "val"
  config.data.isic = ml_collections.ConfigDict()
  config.data.isic.manual_dir = ""  # the folder holding the download (see medfusion/data/isic.py); required
  config.data.isic.layout = "2020"  # 2020: train/<image_name>.jpg + train.csv | 2019: ISIC_2019_Training_Input/ ...
  # The original work's lists (train 8,169 / val 1,021 / test 1,021); "" for the builder's own stratified split.
  config.data.isic.split_lists = str(default.REPO / "data" / "original_splits")
  config.data.isic.val_fraction = 0.1  # own splits: share of each class held out for validation
  config.data.isic.test_fraction = 0.1  # own splits: share of each class held out for testing
  config.data.isic.split_seed = 0
  default.original_work_training(config)
  config = default.apply_args(config, args)
  config.model.wavelet = True  # both backbones run on the 128x128 Haar wavelet input, as in the original work
  if args.smoke:
    config.data.isic.split_lists = ""
  return config
