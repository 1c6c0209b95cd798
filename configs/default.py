r"""Every medfusion setting with its default; experiment configs import this and change a few fields.

  python -m medfusion.train --config=configs/default.py --workdir=runs/default

`get_config(arg)` takes the string after the colon in `--config=configs/X.py:arg`: a comma-separated list of
flags and key=value pairs (`smoke`, `model=paper`, `smoke,model=dit`). A name it does not know is an error.
Model presets (`model=`): `small` (the default UNet), `paper` (a paper-scale UNet), `original_unet` (the UNet of
Favero et al. 2025 on the Haar wavelet input) and `dit` (DiT-B/4); `smoke` shrinks any of them.
`base_config()` holds what every trainer reads (data, training loop, checkpoints); `get_config` adds the
diffusion model, its loss, the classifier and the evaluators.
"""

import pathlib

import ml_collections

REPO = pathlib.Path(__file__).resolve().parent.parent
BUNDLED_NPZ = str(REPO / "data" / "pneumoniamnist_28.npz")
DERMAMNIST_NPZ = str(REPO / "data" / "dermamnist_28.npz")
MODEL_PRESETS = ("small", "paper", "original_unet", "dit")


def set_classes(config, names) -> None:
  """`config.data.class_names` and `config.data.num_classes`, their number: the count is derived, never written by
  hand (on the command line `--config.data.class_names=a,b,c` updates it too)."""
  config.data.class_names = tuple(names)
  config.data.num_classes = len(config.data.class_names)


def parse_arg(arg: str, **defaults):
  """Parses 'smoke,model=paper' into a ConfigDict whose fields take the types of `defaults`."""
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument '{key}' is not one of {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      parsed[key] = value.lower() in ("", "1", "true", "yes")
    else:
      parsed[key] = kind(value)
  return parsed


def base_config():
  """Data, training loop and checkpoint settings, shared by the diffusion model and the ResNet baseline."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # XLA:CPU's YNNPACK path for convolutions used one core of the reference CPU; "off" measured fastest there
  # (README, Performance). default | no_convolutions | off. Ignored on GPU/TPU.
  config.cpu_ynnpack = "off"
  # Compiled XLA programs are kept here, so a command run again with the same shapes skips compilation; "" turns
  # the cache off (JAX_COMPILATION_CACHE_DIR, when set, wins).
  config.compilation_cache = "~/.cache/medfusion/jax"

  config.data = ml_collections.ConfigDict()
  config.data.source = "npz"  # npz | synthetic_lesions | image_folder | arrays
  config.data.npz = BUNDLED_NPZ  # MedMNIST-layout file (source=npz)
  # image_folder: root/<split>/<class>/<image>; arrays: the <split>.npz files written by medfusion.prepare
  config.data.folder = ""
  config.data.synthetic_config = "default"  # default | smoke (source=synthetic_lesions)
  config.data.tfds_data_dir = str(pathlib.Path.home() / "tensorflow_datasets")
  set_classes(config, ("normal", "pneumonia"))
  config.data.num_channels = 1
  config.data.image_size = 32  # model resolution; smaller images are padded or resized to it
  config.data.fit = "pad"  # pad | resize
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.on_bad_file = "stop"  # stop | skip (image folders)
  # Training-batch augmentation, deterministic for the seed: none | flips | flips_rot90 (all 8 flips and 90-degree
  # rotations; label-preserving for skin lesions, not for chest X-rays, which are not left-right symmetric), and
  # '+'-joined terms affine | intensity | corrupt[:families] (MedMNIST-C corruptions; medfusion/data/augmentation.py).
  config.data.augment = "none"

  config.train = ml_collections.ConfigDict()
  config.train.steps = 2400
  config.train.batch_size = 32
  config.train.learning_rate = 5e-4
  config.train.warmup_steps = 200
  config.train.weight_decay = 1e-4
  config.train.grad_clip = 1.0
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.checkpoint_minutes = 10.0  # also save when this long has passed since the last save
  config.train.keep_checkpoints = 3
  config.train.progress_bar = True
  # The checkpoint kept in best/ (and scored by medfusion.score): the best value of this metric, as logged by
  # one of the evaluators in config.evals, in this direction (min | max).
  config.train.best_metric = "val/mean_auc"
  config.train.best_mode = "max"

  # Evaluators run during training: config.evals.<name> = {type, every, prefix, ...}; each logs its metrics
  # under `prefix` every `every` steps and at the last step (medfusion/evaluation/evaluators.py lists the types).
  config.evals = ml_collections.ConfigDict()
  return config


def get_config(arg: str = ""):
  """The default diffusion config: PneumoniaMNIST, the small UNet; `arg` may hold smoke and model=<MODEL_PRESETS>."""
  args = parse_arg(arg, smoke=False, model="small")
  config = base_config()
  config.train.ema_decay = 0.999

  config.model = ml_collections.ConfigDict()
  config.model.type = "unet"
  # The "small" preset, sized to train on a laptop CPU (its size and speed: benchmarks/README.md); `model=paper`
  # selects the paper-scale preset (`paper` below).
  config.model.channels = 32
  config.model.channel_mult = (1, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (8,)  # self-attention at levels of this height; must match a level
  config.model.dropout = 0.1
  config.model.norm_groups = 8
  config.model.dtype = "float32"  # float32 | bfloat16 (compute dtype; parameters stay float32)
  # Run the network on the one-level Haar wavelet transform of the image ([H/2, W/2, 4C]; models/wavelet.py).
  # The model still takes and returns pixels, so training, scoring and sampling are unchanged.
  config.model.wavelet = False

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "cosine"  # cosine | shifted_cosine
  config.diffusion.shift_base_resolution = 32  # shifted_cosine: log-SNR shift 2*log(base/image_size)
  config.diffusion.logsnr_min = -15.0
  config.diffusion.logsnr_max = 15.0
  config.diffusion.prediction = "v"  # v | eps
  config.diffusion.loss_weighting = "min_snr"  # min_snr | uniform
  config.diffusion.min_snr_gamma = 5.0
  config.diffusion.label_dropout = 0.1  # probability of training on the null class
  # Share of training timesteps drawn in the classifier's range [classify.t_min, classify.t_max] instead of [0, 1],
  # importance-weighted so the expected loss is unchanged (0: uniform t, as before).
  config.diffusion.t_focus = 0.0
  # A classification term beside the denoising loss: cross-entropy of the true class under softmax(-relative
  # per-class error / temperature) at one shared (t, eps) per image in the classifier's t range (C more
  # evaluations per image); weight 0 turns it off. Computed every `class_loss_every` steps.
  config.diffusion.class_loss_weight = 0.0
  config.diffusion.class_loss_temperature = 0.05
  config.diffusion.class_loss_every = 1

  # The diffusion classifier (medfusion.score, medfusion.sweep and the diffusion_classifier evaluator).
  config.classify = ml_collections.ConfigDict()
  config.classify.num_draws = 32  # K (timestep, noise) draws per image, shared by all classes
  config.classify.timesteps = "stratified"  # stratified | uniform
  # none | flips_rot90: draw k also shows the image under one of the 8 flips and quarter turns of the square (each
  # 8 consecutive draws all 8, in a per-image order; the same for every class), so the K draws average over them
  # at no extra cost. For models trained with data.augment flips_rot90 (never for chest X-rays).
  config.classify.symmetries = "none"
  config.classify.t_min = 0.0
  config.classify.t_max = 1.0
  config.classify.error = "eps_mse"  # eps_mse | x_mse | v_mse | eps_l1
  config.classify.batch_size = 64  # images per kernel call (padded; never recompiles)
  config.classify.chunk_size = 32  # model evaluations per vectorized chunk and device: 32 on CPU, 512+ on GPU/TPU
  config.classify.dtype = "float32"  # float32 | bfloat16
  config.classify.adaptive = "none"  # none | exact | sequential | predictive (early stopping, README)
  config.classify.draws_per_round = 4
  # sequential: chance of stopping on a class that is not the most voted; predictive: chance that the full budget
  # would have voted otherwise
  config.classify.delta = 0.01
  config.classify.min_draws = 0  # no image stops before this many draws
  # timestep weighting of the mean error, reported by medfusion.sweep (docs/accuracy.md): none | label_free |
  # shared | shared_offsets | per_class | per_class_offsets
  config.classify.weighting = "none"
  config.classify.prune_stages = ()  # ((draws, classes_kept), ...) staged class pruning
  # softmax(-mean error / T) for the probabilities. None: the T fitted on the eval split for this checkpoint and
  # these classify settings (medfusion.score fits and stores it); a number here always wins.
  config.classify.temperature = ml_collections.config_dict.placeholder(float)
  # Class prior of the probabilities and the mean prediction: uniform | train (training-split frequencies) |
  # comma-separated weights, one per class. The vote is unaffected (each draw votes for its lowest error).
  config.classify.prior = "uniform"
  config.classify.positive_class = ""  # a class name: metrics.json adds it against the rest (e.g. mel)

  # Sampling and explanations (medfusion.sample, medfusion.explain; medfusion/explanations/). Randomness comes from
  # config.seed: sample i uses the noise of key(seed) folded with i, a counterfactual of image i that of its index, so
  # every target class of one image starts from the same noise.
  config.explain = ml_collections.ConfigDict()
  # partial_noising | ddim_inversion: how counterfactuals are made. DDIM inversion kept the image closer at an equal
  # or higher flip rate on synthetic lesions and PneumoniaMNIST (docs/explanations.md); partial noising is the
  # original code's way.
  config.explain.method = "ddim_inversion"
  config.explain.t_star = 0.5  # noise level t* in (0, 1] a counterfactual starts from (partial noising, inversion)
  config.explain.guidance = 4.5  # classifier-free guidance w: (1 + w) * conditional - w * null class; 0: conditional
  config.explain.steps = 50  # denoising steps over [0, 1]; a counterfactual runs round(t_star * steps) of them
  config.explain.sampler = "ddim"  # ddim | ddpm: medfusion.sample and partial noising (DDIM inversion uses DDIM)
  config.explain.invert_class = "null"  # null | predicted: the class DDIM inversion runs under
  config.explain.smoothing_sigma = 1.0  # Gaussian blur (pixels) of difference maps before normalising; 0: none
  config.explain.error_map = True  # the error-difference map: per-pixel errors on the classify draws (B*C*H*W memory)
  config.explain.batch_size = 32  # examples (image x target class) per sampler call (padded; never recompiles)
  config.explain.dtype = "float32"  # float32 | bfloat16: the denoiser's compute dtype when sampling
  # The judge's Grad-CAM layer: "stageS" (the output of stage S) or "stageS.B" (of its block B). Stage 3 is the
  # deepest whose cells are no wider than a small lesion (8x8 on 32 px, 4 px cells; Grad-CAM's 14x14 on 224 px is
  # a cell every 7 % of the width); --evaluate reports every block (docs/explanations.md).
  config.explain.grad_cam_layer = "stage3"
  # --evaluate: a counterfactual is a valid flip when the judge calls it the target class and its mean |x - x_cf|
  # outside the lesion mask (whole image without one) is below this (2.5 % of the [-1, 1] range).
  config.explain.valid_change = 0.05
  config.explain.faithfulness_steps = 20  # deletion/insertion curves: pixels removed or revealed in 5 % steps
  config.explain.faithfulness_draws = 0  # > 0: also the diffusion classifier's curves, on this many draws (costly)

  # Validation loss of the EMA model on fixed draws of the first `num_examples` images of the eval split's half A
  # (`half`: the checkpoint is chosen on half A, so that half B reports it; 'all' for the whole split).
  config.evals.loss = ml_collections.ConfigDict(
    {"type": "denoising_loss", "every": 250, "prefix": "val/", "num_examples": 256, "half": "A", "batch_size": 128}
  )
  # The diffusion classifier (config.classify, at the full budget of `num_draws` draws) on the first
  # `num_examples` images of half A: val/vote_accuracy, val/mean_auc, ...
  config.evals.classify = ml_collections.ConfigDict(
    {"type": "diffusion_classifier", "every": 500, "prefix": "val/", "num_examples": 128, "half": "A", "num_draws": 8}
  )
  return apply_args(config, args)


def apply_args(config, args):
  """The `model=` preset, then `smoke` (which shrinks whatever preset to a tiny model)."""
  if args.model not in MODEL_PRESETS:
    raise ValueError(f"config argument model='{args.model}' is not one of {MODEL_PRESETS}")
  presets = {"paper": paper, "original_unet": original_unet, "dit": dit}
  if args.model in presets:
    presets[args.model](config)
  if args.smoke:
    smoke(config)
  return config


def paper(config):
  """Paper-scale UNet (Favero et al. 2025 scale): 256x256 input, widths 256/512/768, attention at 8x8."""
  config.data.image_size = 256
  config.data.fit = "resize"
  config.model.channels = 256
  config.model.channel_mult = (1, 1, 2, 2, 3, 3)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (8,)
  config.model.norm_groups = 32
  config.classify.batch_size = 8
  config.classify.chunk_size = 32
  return config


def original_unet(config):
  """The UNet of Favero et al. 2025: 256x256 images as their 128x128 Haar wavelet transform (12 channels for RGB),
  widths 128/128/256/512/1024 with two residual blocks each and attention at the lowest resolution (8x8)."""
  config.data.image_size = 256
  config.data.fit = "resize"
  config.model.wavelet = True
  config.model.channels = 128
  config.model.channel_mult = (1, 1, 2, 4, 8)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (8,)
  config.model.norm_groups = 32
  config.classify.batch_size = 8
  config.classify.chunk_size = 32
  return config


def dit(config):
  """DiT-B/4 (Peebles & Xie 2023) at 256x256: 4x4 patches, 12 blocks of width 768 with 12 heads.

  `config.model` is replaced (a DiT config carries no UNet fields); its `dtype` carries over. It runs on the
  128x128 Haar wavelet input, as the original work did: 1,024 tokens. In pixel space
  (`--config.model.wavelet=False`) a train step of 2 images asked for 47 GB on the CPU (attention over 4,096 tokens).
  """
  config.data.image_size = 256
  config.data.fit = "resize"
  dtype = config.model.dtype
  config.model = ml_collections.ConfigDict()
  config.model.type = "dit"
  config.model.patch_size = 4  # p: the image (or its wavelet transform) is cut into p x p patches, one token each
  config.model.depth = 12  # transformer blocks
  config.model.hidden_size = 768  # token width; divisible by num_heads and by 4
  config.model.num_heads = 12
  config.model.mlp_ratio = 4.0  # MLP width / hidden_size
  config.model.dropout = 0.0
  config.model.dtype = dtype  # float32 | bfloat16 (compute dtype; parameters stay float32)
  config.model.wavelet = True  # on the one-level Haar wavelet transform of the image
  # DiT's AdamW settings: learning rate 1e-4, no weight decay (on the shared warm-up + cosine schedule).
  config.train.learning_rate = 1e-4
  config.train.weight_decay = 0.0
  config.classify.batch_size = 8
  config.classify.chunk_size = 32
  return config


def original_work_training(config):
  """The training and classification settings of Favero et al. 2025 (configs/chexpert.py, configs/isic.py):
  v-prediction, shifted-cosine log-SNR (base resolution 64), min-SNR-5, label dropout 0.15, Adam (AdamW without
  decay) at 1e-4, batch 128, EMA 0.999; 51 draws per image, majority vote (both aggregators are always reported)."""
  config.diffusion.update(prediction="v", schedule="shifted_cosine", shift_base_resolution=64)
  config.diffusion.update(loss_weighting="min_snr", min_snr_gamma=5.0, label_dropout=0.15)
  config.train.update(learning_rate=1e-4, weight_decay=0.0, batch_size=128, ema_decay=0.999, warmup_steps=1000)
  # Our choice (the original's step budget is not in what it released): ~390 epochs of CheXpert's 16,324 images.
  config.train.update(steps=50_000, log_every=100, checkpoint_every=2000)
  config.evals.loss.update(every=1000)
  config.evals.classify.update(every=5000)
  config.classify.update(num_draws=51, adaptive="none")
  return config


def smoke(config):
  """Shrinks a diffusion config to a tiny model and a few steps (about a minute on 2 CPU cores)."""
  if config.model.type == "dit":
    config.model.update(patch_size=4, depth=2, hidden_size=32, num_heads=2, dropout=0.0)
  else:
    config.model.channels = 16
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (16,)
    config.model.norm_groups = 4
    config.model.dropout = 0.0
  config.data.image_size = 32
  config.train.steps = 10
  config.train.batch_size = 16
  config.train.warmup_steps = 2
  config.train.log_every = 5
  config.train.checkpoint_every = 5
  config.evals.loss.update(every=5, num_examples=32, batch_size=32)
  config.evals.classify.update(every=10, num_examples=16, num_draws=8)  # the scoring kernel: compiled once
  config.classify.num_draws = 8
  config.classify.batch_size = 16
  config.classify.chunk_size = 64
  config.explain.steps = 10  # counterfactuals from t_star 0.5: 5 steps
  return config
