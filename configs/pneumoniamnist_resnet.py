r"""ResNet-18 baseline on PneumoniaMNIST: the data settings of configs/pneumoniamnist.py, scored by the same metrics.

  python -m medfusion.train --config=configs/pneumoniamnist_resnet.py --workdir=runs/pneumonia_resnet

The discriminative row of the "Real data" table. 552 steps at batch 128 are 15 epochs of the 4,707 training images;
metrics_val.json in the workdir holds the best checkpoint (by AUC on val half A) on the whole val split and on each
half.
`:smoke` trains width 8 for 10 steps. train.learning_rate, warmup_steps, weight_decay and grad_clip mean what they
mean for the diffusion trainer (the same warmup+cosine schedule).
"""

import ml_collections

from configs import default


def get_config(arg: str = ""):
  """PneumoniaMNIST at 32x32 with a ResNet-18; `arg` may be 'smoke'."""
  args = default.parse_arg(arg, smoke=False)
  config = default.base_config()  # the data settings of configs/pneumoniamnist.py

  config.model = ml_collections.ConfigDict()
  config.model.type = "resnet18"  # resnet18
  config.model.width = 64  # channels of the first stage; stages have width * (1, 2, 4, 8)
  config.model.dtype = "float32"  # float32 | bfloat16

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"  # sgd | adamw
  config.optim.momentum = 0.9  # sgd only
  config.optim.nesterov = True  # sgd only
  config.optim.label_smoothing = 0.0

  # Applied in the jitted train step (flips and rotations are config.data.augment, off: chest X-rays are not
  # left-right symmetric).
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_padding = 4  # random crop of the zero-padded image = translation by up to 4 pixels

  # The one classify field a ResNet reads, as in the diffusion configs: a class reported against the rest
  # (sensitivity, specificity, AUC) beside the multi-class metrics; "" for none.
  config.classify = ml_collections.ConfigDict({"positive_class": ""})

  config.train.steps = 552
  config.train.batch_size = 128
  config.train.learning_rate = 0.1
  config.train.warmup_steps = 37  # one epoch
  config.train.weight_decay = 5e-4  # coupled L2 for sgd (kernels only); use ~0.05 with adamw
  config.train.grad_clip = 10.0  # a guard against spikes (grad_norm ~4-7 early on); see metrics.jsonl
  config.train.log_every = 10
  config.train.checkpoint_every = 111
  config.train.best_metric = "val/auc"  # the same rule as the diffusion configs' val/mean_auc
  config.train.best_mode = "max"

  # Accuracy, AUC, F1, ECE, ... and the NLL (val/loss) of val half A (262 images) once per epoch: cheap for a
  # ResNet. The best checkpoint is chosen there, so half B (medfusion.score's `halves`) reports it.
  config.evals.classify = ml_collections.ConfigDict(
    {"type": "classification", "every": 37, "prefix": "val/", "num_examples": 1024, "half": "A", "batch_size": 128}
  )

  if args.smoke:
    config.model.width = 8
    config.train.steps = 10
    config.train.batch_size = 16
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 5
    config.evals.classify.update(every=5, num_examples=64, batch_size=64)
  return config
