r"""ResNet-18 baseline on DermaMNIST: the data settings of configs/dermamnist.py, scored by the same metrics.

  python -m medfusion.train --config=configs/dermamnist_resnet.py --workdir=runs/derma_resnet

1,650 steps at batch 128 are 30 epochs of the 7,007 training images; metrics_val.json and predictions_val.npz in the
workdir hold the best checkpoint (by macro AUC on val half A) on the whole val split and on each half.
`:smoke` trains width 8 for 10 steps.
"""

from configs import default, dermamnist, pneumoniamnist_resnet


def get_config(arg: str = ""):
  """DermaMNIST at 32x32 with a ResNet-18; `arg` may be 'smoke'."""
  args = default.parse_arg(arg, smoke=False)
  config = dermamnist.data(pneumoniamnist_resnet.get_config(arg))
  # Flips and rotations cost the ResNet 4.6 points of balanced accuracy and 19 of melanoma sensitivity on the
  # validation split (docs/dermamnist.md); it keeps the random crops of configs/pneumoniamnist_resnet.py.
  config.data.augment = "none"
  config.classify.positive_class = "mel"  # melanoma against the rest, as configs/dermamnist.py reports it
  if not args.smoke:
    config.train.steps = 1650
    config.train.warmup_steps = 55  # one epoch
    config.train.checkpoint_every = 330
    config.evals.classify.update(every=55)  # val half A (501 images) once per epoch
  return config
