"""Checks a config before any work starts, so a bad value fails in one line naming the field.

The choices and ranges live with the code that uses them: this builds each typed spec from the config (model,
schedule, loss, kernel, classifier, evaluators, sampler) and lets it validate its own fields.
"""

from medfusion import models, runtime
from medfusion.classify import classifier, kernel
from medfusion.data import pipeline
from medfusion.diffusion import losses, schedules
from medfusion.errors import ConfigError
from medfusion.evaluation import evaluators, report
from medfusion.explanations import counterfactual, evaluate, saliency, sampler
from medfusion.models import resnet
from medfusion.training import loop, resnet_trainer


def check(config) -> None:
  """Raises ConfigError for the first invalid field."""
  if config.cpu_ynnpack not in runtime.YNNPACK_FUSION_TYPES:
    raise ConfigError(f"config.cpu_ynnpack={config.cpu_ynnpack!r} is not one of {tuple(runtime.YNNPACK_FUSION_TYPES)}")
  pipeline.check_data_config(config.data)
  loop.check_train_config(config.train)
  evaluators.check(config)
  if models.model_kind(config) == "resnet":
    resnet_trainer.check_baseline(config)
    _check_positive_class(config.classify.positive_class, config.data.class_names)
    return
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ConfigError(f"config.train.ema_decay={config.train.ema_decay!r} must be in [0, 1)")
  models.denoiser_config(config)
  schedules.Schedule.from_config(config.diffusion, config.data.image_size)
  losses.LossSpec.from_config(config)
  kernel.KernelSpec.from_config(config)
  classifier.ClassifierSpec.from_config(config)
  if config.classify.chunk_size < config.data.num_classes:
    raise ConfigError(
      f"config.classify.chunk_size={config.classify.chunk_size} must be at least data.num_classes "
      f"({config.data.num_classes})"
    )
  c = config.classify
  if c.prior not in ("uniform", "train"):
    try:
      report.class_prior(c.prior, None, config.data.num_classes)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  _check_positive_class(c.positive_class, config.data.class_names)
  if config.classify.temperature is not None and not config.classify.temperature > 0:
    raise ConfigError(f"config.classify.temperature={config.classify.temperature!r} must be positive")
  sampler.SamplerSpec.from_config(config)
  counterfactual.CounterfactualSpec.from_config(config)
  e = config.explain
  if not (isinstance(e.smoothing_sigma, (int, float)) and e.smoothing_sigma >= 0):
    raise ConfigError(f"config.explain.smoothing_sigma={e.smoothing_sigma!r} must be a number >= 0")
  if not isinstance(e.error_map, bool):
    raise ConfigError(f"config.explain.error_map={e.error_map!r} must be True or False")
  saliency.block_index(e.grad_cam_layer, resnet.STAGE_SIZES["resnet18"])
  evaluate.EvaluationSpec.from_config(config)


def _check_positive_class(name: str, class_names) -> None:
  if name and name not in class_names:
    raise ConfigError(f"config.classify.positive_class={name!r} is not one of {tuple(class_names)}")
