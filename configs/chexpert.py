r"""CheXpert pleural effusion against no finding, as Favero et al. 2025 ran it: their train/valid/test lists
(data/original_splits), 256x256 frontal views, the original UNet on the one-level Haar wavelet input, v-prediction,
shifted-cosine schedule, min-SNR-5, label dropout 0.15, Adam 1e-4 at batch 128, EMA 0.999, 51 draws and a vote.

  python -m medfusion.train --config=configs/chexpert.py --workdir=runs/chexpert \
      --config.data.chexpert.manual_dir=/data/chexpert   # the folder that holds CheXpert-v1.0-small/

`:dit` trains DiT-B/4 instead; `:smoke` a tiny model on the builder's own splits (any CheXpert-layout folder).
"""

import ml_collections

from configs import default


def get_config(arg: str = ""):
  """CheXpert at 256x256; `arg` may hold smoke and dit (or model=<preset>)."""
  args = default.parse_arg(arg, smoke=False, dit=False, model="original_unet")
  if args.dit:
    args.model = "dit"
  config = default.get_config()
  config.data.source = "chexpert"
  default.set_classes(config, ("no_finding", "pleural_effusion"))
  config.data.num_channels = 1
  config.data.eval_split = "val"
  config.data.chexpert = ml_collections.ConfigDict()
  config.data.chexpert.manual_dir = ""  # the folder holding CheXpert-v1.0-small/ (or CheXpert-v1.0/); required
  # The original work's lists (train 16,324 / val 2,040 / test 2,040); "" for the builder's own patient-level split.
  config.data.chexpert.split_lists = str(default.REPO / "data" / "original_splits")
  config.data.chexpert.finding = "Pleural Effusion"  # the positive class, against No Finding
  config.data.chexpert.uncertain = "drop"  # -1 labels: positive | negative | drop (the original dropped them)
  config.data.chexpert.frontal_only = True
  config.data.chexpert.val_fraction = 0.1  # own splits: share of train.csv's patients held out for validation
  config.data.chexpert.split_seed = 0
  default.original_work_training(config)
  config = default.apply_args(config, args)  # the 256x256 preset
  config.model.wavelet = True  # both backbones run on the 128x128 Haar wavelet input, as in the original work
  if args.smoke:
    config.data.chexpert.split_lists = ""
  return config
