"""Checks a config before any work starts, so a bad value fails in one line naming the field."""

from medfusion.errors import UserError


class ConfigError(UserError):
  """A config field with a value medfusion cannot use."""


_CHOICES = {
  "data.source": ("npz", "synthetic_lesions", "image_folder", "arrays"),
  "data.fit": ("pad", "resize"),
  "data.on_bad_file": ("stop", "skip"),
  "model.dtype": ("float32", "bfloat16"),
  "diffusion.schedule": ("cosine", "shifted_cosine"),
  "diffusion.prediction": ("v", "eps"),
  "diffusion.loss_weighting": ("min_snr", "uniform"),
  "eval.best_mode": ("min", "max"),
  "classify.timesteps": ("stratified", "uniform"),
  "classify.error": ("eps_mse", "x_mse", "v_mse", "eps_l1"),
  "classify.dtype": ("float32", "bfloat16"),
  "classify.adaptive": ("none", "exact", "sequential"),
  "cpu_ynnpack": ("default", "no_convolutions", "off"),
}

_POSITIVE = (
  "data.num_classes",
  "data.num_channels",
  "data.image_size",
  "model.channels",
  "model.num_res_blocks",
  "model.norm_groups",
  "train.steps",
  "train.batch_size",
  "train.log_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.eval_every",
  "eval.batch_size",
  "eval.num_examples",
  "classify.num_draws",
  "classify.batch_size",
  "classify.chunk_size",
  "classify.draws_per_round",
  "train.learning_rate",
  "classify.temperature",
)


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def check(config) -> None:
  """Raises ConfigError for the first invalid field."""
  for field, choices in _CHOICES.items():
    if _get(config, field) not in choices:
      raise ConfigError(f"config.{field}={_get(config, field)!r} is not one of {choices}")
  for field in _POSITIVE:
    if not _get(config, field) > 0:
      raise ConfigError(f"config.{field}={_get(config, field)!r} must be positive")
  for field in ("train.warmup_steps",):
    if _get(config, field) < 0:
      raise ConfigError(f"config.{field}={_get(config, field)!r} must be >= 0")
  for field in ("train.ema_decay", "diffusion.label_dropout", "model.dropout"):
    if not 0.0 <= _get(config, field) < 1.0:
      raise ConfigError(f"config.{field}={_get(config, field)!r} must be in [0, 1)")
  if not 0.0 < config.classify.delta < 1.0:
    raise ConfigError(f"config.classify.delta={config.classify.delta!r} must be in (0, 1)")
  if not 0.0 <= config.classify.t_min < config.classify.t_max <= 1.0:
    raise ConfigError("config.classify.t_min and t_max must satisfy 0 <= t_min < t_max <= 1")
  if len(config.data.class_names) != config.data.num_classes:
    raise ConfigError(
      f"config.data.class_names has {len(config.data.class_names)} names but data.num_classes is "
      f"{config.data.num_classes}"
    )
  levels = len(config.model.channel_mult)
  if config.data.image_size % 2 ** (levels - 1):
    raise ConfigError(
      f"config.data.image_size={config.data.image_size} must be divisible by {2 ** (levels - 1)} "
      f"for {levels} UNet levels"
    )
  for mult in config.model.channel_mult:
    if (config.model.channels * mult) % config.model.norm_groups:
      raise ConfigError(
        f"config.model.norm_groups={config.model.norm_groups} must divide every level's width "
        f"({config.model.channels}*{mult})"
      )
  if config.classify.chunk_size < config.data.num_classes:
    raise ConfigError(
      f"config.classify.chunk_size={config.classify.chunk_size} must be at least data.num_classes "
      f"({config.data.num_classes})"
    )
  c = config.classify
  if c.adaptive != "none" and c.num_draws % c.draws_per_round:
    raise ConfigError(
      f"config.classify.num_draws={c.num_draws} must be a multiple of classify.draws_per_round={c.draws_per_round}"
    )
  if c.prune_stages:
    if sum(d for d, _ in c.prune_stages) > c.num_draws:
      raise ConfigError(f"config.classify.prune_stages={c.prune_stages} uses more than num_draws={c.num_draws} draws")
    kept = [k for _, k in c.prune_stages]
    if any(k < 1 for k in kept) or kept[0] > config.data.num_classes or kept != sorted(kept, reverse=True):
      raise ConfigError(
        f"config.classify.prune_stages={c.prune_stages}: classes kept must shrink from at most data.num_classes to >= 1"
      )
