r"""Synthetic lesions: procedural X-ray-like images, class 'lesion' carries a bright blob with a known mask.

A task with a known answer for checking classification and explanations end to end:

  python -m medfusion.train --config=configs/synthetic_lesions.py --workdir=runs/lesions

`:smoke` trains a tiny model for a few steps on the small 'smoke' build of the data; `:hard` uses the hard variant
(lesions that brightness does not give away: medfusion/data/synthetic_lesions.py), e.g. `:hard,smoke`.
"""

from configs import default


def get_config(arg: str = ""):
  """Synthetic lesions at 32x32; `arg` may hold smoke, hard and model=small|paper."""
  args = default.parse_arg(arg, smoke=False, hard=False, model="small")
  config = default.get_config()
  config.data.source = "synthetic_lesions"
  default.set_classes(config, ("healthy", "lesion"))
  config.data.num_channels = 1
  config.data.image_size = 32
  config.data.eval_split = "val"
  # The shipped pretrained/synthetic_lesions: 6,000 steps at lr 1e-3 without dropout (its single-draw accuracy on
  # val beat a 3,000-step run at 5e-4 with dropout 0.1; pretrained/synthetic_lesions/README.md).
  config.train.steps = 6000
  config.train.learning_rate = 1e-3
  config.model.dropout = 0.0
  # Draws outside t in [0.2, 0.6] carried no class signal for this data (per-timestep vote accuracy at chance at
  # the ends of [0, 1], highest in the middle), so they only add noise to the vote.
  config.classify.t_min = 0.2
  config.classify.t_max = 0.6
  config.data.synthetic_config = ("hard_" if args.hard else "") + ("smoke" if args.smoke else "default")
  if config.data.synthetic_config == "hard_default":
    config.data.synthetic_config = "hard"
  return default.apply_args(config, args)
