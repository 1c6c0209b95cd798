"""Evaluators run during training (big_vision style): `config.evals.<name>` names a type and its settings.

Every evaluator has `type`, `every` (steps between runs; it also runs at the last step), `prefix` (prepended to its
metric names, e.g. 'val/') and `num_examples` (the first N images of `config.data.eval_split`, the same images
every time, so runs are comparable), and may have `half`: 'A' or 'B' restricts it to that half of the eval split
(`pipeline.half_split`, seed 0, stratified by class), so that a checkpoint chosen on half A can be reported
on half B (`medfusion.score` reports both halves); 'all' (the default) is the whole split.

As big_vision's, an evaluator is built with the trainer's `predict_fn` rather than rebuilding the model (the
denoiser's `apply`; the ResNet's jitted predict step, evaluation/resnet_inference.py), and `run(variables)` returns
{prefix + metric: value} for the variables the trainer passes (the diffusion trainer the EMA parameters, the ResNet
trainer params and batch statistics).

Types:
- `denoising_loss` (`batch_size`): `loss`, the conditional denoising loss of the EMA model on fixed draws.
- `diffusion_classifier` (`num_draws`): `{vote,mean}_{accuracy,balanced_accuracy,auc,f1}` and `temperature`:
  the classifier of medfusion.score (config.classify) at a full budget of `num_draws` draws.
- `classification` (`batch_size`): `accuracy`, `auc`, `f1`, ..., `ece`, `aurc` and `loss` (NLL) of a
  discriminative classifier (the ResNet).
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from medfusion import metrics, models, sharding
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.data import pipeline
from medfusion.diffusion import losses, schedules
from medfusion.errors import ConfigError
from medfusion.evaluation import report, resnet_inference, split_runner

log = logging.getLogger("medfusion")

COMMON_FIELDS = ("type", "every", "prefix", "num_examples")


class DenoisingLoss:
  """Summed conditional denoising loss of the EMA model on the same draws every time."""

  fields = ("batch_size",)
  needs = "diffusion"
  metric_names = ("loss",)

  def __init__(self, config, settings, split: pipeline.Split, mesh, predict_fn):
    self.config, self.settings, self.split, self.mesh = config, settings, split, mesh
    sharding.check_batch_size(settings.batch_size, f"config.evals.{settings.name}.batch_size")
    schedule = schedules.Schedule.from_config(config.diffusion, config.data.image_size)
    spec = losses.LossSpec.from_config(config)

    def eval_step(params, batch, key):
      def apply_fn(z, logsnr, labels):
        return predict_fn({"params": params}, z, logsnr, labels)

      _, per_example = losses.denoising_loss(
        apply_fn, batch["image"], batch["label"], key, schedule, spec, config.data.num_classes, train=False
      )
      valid = batch["valid"].astype(jnp.float32)
      return jnp.sum(per_example * valid), jnp.sum(valid)

    rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    self.step = jax.jit(eval_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep))

  def run(self, params) -> dict:
    stop = min(self.settings.num_examples, len(self.split.labels))
    eval_key = jax.random.fold_in(jax.random.key(self.config.seed), 2**31 - 1)
    total = count = 0.0
    for i, batch in enumerate(pipeline.eval_batches(self.split, self.settings.batch_size, 0, stop)):
      batch = {k: batch[k] for k in ("image", "label", "valid")}
      s, n = self.step(params, sharding.shared_to_global(self.mesh, batch), jax.random.fold_in(eval_key, i))
      total, count = total + float(s), count + float(n)
    return {"loss": total / max(count, 1.0)}


class DiffusionClassifierEvaluator:
  """The diffusion classifier of medfusion.score on a fixed subset, at a small full budget of draws.

  Mean-row probabilities use the temperature fitted on the same subset (reported as `temperature`); binary AUC
  does not depend on it. It runs the classifier medfusion.score runs, so training and scoring report the same
  quantities.
  """

  fields = ("num_draws",)
  needs = "diffusion"
  reported = ("accuracy", "balanced_accuracy", "auc", "f1")
  metric_names = tuple(f"{agg}_{m}" for m in reported for agg in ("vote", "mean")) + ("temperature",)

  def __init__(self, config, settings, split: pipeline.Split, mesh, predict_fn=None):
    del predict_fn  # unused: the classifier's kernel builds the denoiser of config.model, as medfusion.score's does
    self.settings, self.split, self.mesh = settings, split, mesh
    self.config = config.copy_and_resolve_references()
    self.config.classify.update(num_draws=settings.num_draws, adaptive="none", prune_stages=())

  def run(self, params) -> dict:
    classifier = DiffusionClassifier(self.config, params, self.mesh, source="the EMA model being trained")
    n = min(self.settings.num_examples, len(self.split.labels))
    totals = split_runner.collect(split_runner.classify_split(classifier, self.split, n, n))
    temperature = metrics.fit_temperature(-totals.mean_error, totals.label)
    result = report.split_metrics(totals, report.per_image(totals, temperature))
    flat = {f"{agg}_{m}": result[agg][m] for agg in ("vote", "mean") for m in self.reported}
    return {**flat, "temperature": temperature}


def classification_report(labels, probs) -> dict:
  """classification_metrics plus the mean negative log-likelihood ('loss')."""
  nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
  return {**metrics.classification_metrics(labels, probs), "loss": float(nll)}


class ClassificationEvaluator:
  """A discriminative classifier's metrics (those of medfusion.metrics plus the NLL) on a fixed subset."""

  fields = ("batch_size",)
  needs = "resnet"
  metric_names = (*metrics.CLASSIFICATION_METRICS, "loss")

  def __init__(self, config, settings, split: pipeline.Split, mesh, predict_fn):
    del config
    self.settings, self.split, self.mesh = settings, split, mesh
    sharding.check_batch_size(settings.batch_size, f"config.evals.{settings.name}.batch_size")
    self.step = predict_fn

  def run(self, variables) -> dict:
    stop = min(self.settings.num_examples, len(self.split.labels))
    probs = resnet_inference.predict(self.step, variables, self.split, self.settings.batch_size, self.mesh, stop)
    return classification_report(self.split.labels[:stop], probs)


TYPES = {
  "denoising_loss": DenoisingLoss,
  "diffusion_classifier": DiffusionClassifierEvaluator,
  "classification": ClassificationEvaluator,
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """One evaluator's entry in config.evals, checked."""

  name: str
  type: str
  every: int
  prefix: str
  num_examples: int
  half: str = "all"
  batch_size: int = 0
  num_draws: int = 0

  @classmethod
  def from_config(cls, name: str, entry, model_kind: str) -> "Settings":
    where = f"config.evals.{name}"
    kind = entry.get("type")
    if kind not in TYPES:
      raise ConfigError(f"{where}.type={kind!r} is not one of {tuple(TYPES)}")
    evaluator = TYPES[kind]
    if evaluator.needs != model_kind:
      raise ConfigError(f"{where}.type={kind!r} evaluates a {evaluator.needs} model; this config trains a {model_kind}")
    expected = {*COMMON_FIELDS, *evaluator.fields}
    if set(entry) - {"half"} != expected:
      extra, missing = sorted(set(entry) - expected - {"half"}), sorted(expected - set(entry))
      raise ConfigError(f"{where} ({kind}): unknown fields {extra}, missing fields {missing}")
    for field in ("every", "num_examples", *evaluator.fields):
      if not (isinstance(entry[field], int) and entry[field] > 0):
        raise ConfigError(f"{where}.{field}={entry[field]!r} must be a positive integer")
    if entry.get("half", "all") not in pipeline.HALVES:
      raise ConfigError(f"{where}.half={entry['half']!r} is not one of {pipeline.HALVES}")
    return cls(name, **{k: entry[k] for k in expected | ({"half"} & set(entry))})


def check(config) -> list[Settings]:
  """The checked settings of every evaluator, and that the best metric is one of theirs."""
  settings = [Settings.from_config(name, entry, models.model_kind(config)) for name, entry in config.evals.items()]
  logged = sorted(s.prefix + m for s in settings for m in TYPES[s.type].metric_names)
  if config.train.best_metric not in logged:
    raise ConfigError(f"config.train.best_metric={config.train.best_metric!r} is not one of {logged}")
  if config.train.best_mode not in ("min", "max"):
    raise ConfigError(f"config.train.best_mode={config.train.best_mode!r} is not one of ('min', 'max')")
  return settings


def build(config, split: pipeline.Split, mesh, predict_fn) -> list:
  """The evaluators of config.evals, each with its `settings` attached; `predict_fn` is the trainer's model (see
  the module docstring)."""
  evaluators = []
  for settings in check(config):
    evaluator = TYPES[settings.type](config, settings, _images(config, settings, split), mesh, predict_fn)
    evaluator.settings = settings
    evaluators.append(evaluator)
  return evaluators


def _images(config, settings: Settings, split: pipeline.Split) -> pipeline.Split:
  """The evaluator's half of the eval split; all of it, with a warning, when that half is empty (a split of a
  handful of images, as a smoke test's fake download has)."""
  half = pipeline.split_half(split, settings.half)
  if len(half.labels) == 0:
    log.warning(
      "config.evals.%s.half=%s is empty: the %s split has only %d image(s); the evaluator uses all of them",
      settings.name,
      settings.half,
      config.data.eval_split,
      len(split.labels),
    )
    return split
  return half


def due(evaluator, step: int, last_step: int) -> bool:
  return step % evaluator.settings.every == 0 or step == last_step


def run(evaluator, variables) -> dict:
  """{prefix + name: value} of one run."""
  return {evaluator.settings.prefix + k: float(v) for k, v in evaluator.run(variables).items()}
