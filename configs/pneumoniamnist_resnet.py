r"""ResNet-18 baseline on PneumoniaMNIST: the data settings of configs/pneumoniamnist.py, scored by the same metrics.

  python -m medfusion.baseline --config=configs/pneumoniamnist_resnet.py --workdir=runs/pneumonia_resnet

The discriminative row of the "Real data" table. 552 steps at batch 128 are 15 epochs of the 4,707 training images;
metrics_val.json in the workdir holds the best checkpoint (by val accuracy) on the whole val split.
`--config=configs/pneumoniamnist_resnet.py:smoke` trains width 8 for 10 steps.

The diffusion fields inherited from configs/default.py (model.channels, diffusion.*, classify.*, train.ema_decay)
stay because configcheck.check reads them; the baseline does not use them. train.learning_rate, warmup_steps,
weight_decay and grad_clip mean what they mean for the diffusion trainer (same warmup+cosine schedule).
"""

import ml_collections

from configs import default, pneumoniamnist


def get_config(arg: str = ""):
  """PneumoniaMNIST at 32x32 with a ResNet-18; `arg` may be 'smoke'."""
  config = pneumoniamnist.get_config()

  config.model.arch = "resnet18"  # resnet18
  config.model.width = 64  # channels of the first stage; stages have width * (1, 2, 4, 8)

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"  # sgd | adamw
  config.optim.momentum = 0.9  # sgd only
  config.optim.nesterov = True  # sgd only
  config.optim.label_smoothing = 0.0

  # Applied in the jitted train step; no flips by default: chest X-rays are not left-right symmetric.
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_padding = 4  # random crop of the zero-padded image = translation by up to 4 pixels
  config.augment.flip = False

  config.train.steps = 552
  config.train.batch_size = 128
  config.train.learning_rate = 0.1
  config.train.warmup_steps = 37  # one epoch
  config.train.weight_decay = 5e-4  # coupled L2 for sgd (kernels only); use ~0.05 with adamw
  config.train.grad_clip = 10.0  # a guard against spikes (grad_norm ~4-7 early on); see metrics.jsonl
  config.train.log_every = 10
  config.train.checkpoint_every = 111
  config.train.eval_every = 37  # once per epoch

  config.eval.batch_size = 128
  config.eval.num_examples = 1024  # all 524 val images: selection is cheap for a ResNet
  config.eval.best_metric = "val/accuracy"
  config.eval.best_mode = "max"

  if default.parse_arg(arg, smoke=False).smoke:
    config.model.width = 8
    config.train.steps = 10
    config.train.batch_size = 16
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 5
    config.train.eval_every = 5
    config.eval.batch_size = 64
    config.eval.num_examples = 64
  return config
