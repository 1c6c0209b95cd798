r"""A narrow ResNet-18 on synthetic lesions: the independent judge of counterfactuals (medfusion.explain --judge).

  python -m medfusion.train --config=configs/synthetic_lesions_resnet.py --workdir=runs/lesions_resnet

Width 16, a quarter of the usual: the task is easy, and the model ships beside the diffusion model. 320 steps at
batch 128 are 20 epochs of the 2,000 training images. `:smoke` trains width 8 for 10 steps on the smoke data.
"""

from configs import default, pneumoniamnist_resnet, synthetic_lesions


def get_config(arg: str = ""):
  """Synthetic lesions at 32x32 with a width-16 ResNet-18; `arg` may hold smoke and hard (the hard variant)."""
  args = default.parse_arg(arg, smoke=False, hard=False)
  config = pneumoniamnist_resnet.get_config("smoke" if args.smoke else "")
  config.data = synthetic_lesions.get_config(arg).data
  if not args.smoke:
    config.model.width = 16
    config.train.steps = 320
    config.train.warmup_steps = 16  # one epoch
    config.train.checkpoint_every = 80
    config.evals.classify.update(every=16, num_examples=256)  # val half A once per epoch
  return config
