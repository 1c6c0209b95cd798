"""The discriminative baseline: a ResNet trained with cross-entropy on the diffusion model's input pipeline.

`train_and_evaluate(config, workdir)` mirrors `medfusion.trainer` (mesh, checkpoints, resume, metric writer) and
scores with `medfusion.metrics.classification_metrics`, so a comparison table's rows come from one code path.
"""

import functools
import json
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medfusion import checkpoint, configcheck, metrics, sharding, trainer
from medfusion import state as state_lib
from medfusion.configcheck import ConfigError
from medfusion.data import pipeline
from medfusion.models.resnet import STAGE_SIZES, ResNet, ResNetConfig
from medfusion.writers import write_json_atomic

log = logging.getLogger("medfusion")

OPTIMIZERS = ("sgd", "adamw")


@flax.struct.dataclass
class BaselineState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def check_baseline(config) -> None:
  """Raises ConfigError for the first invalid baseline field (configcheck.check covers the shared ones)."""
  if config.model.arch not in STAGE_SIZES:
    raise ConfigError(f"config.model.arch={config.model.arch!r} is not one of {tuple(STAGE_SIZES)}")
  if config.optim.name not in OPTIMIZERS:
    raise ConfigError(f"config.optim.name={config.optim.name!r} is not one of {OPTIMIZERS}")
  if not config.model.width > 0:
    raise ConfigError(f"config.model.width={config.model.width!r} must be positive")
  if not config.train.grad_clip > 0:
    raise ConfigError(f"config.train.grad_clip={config.train.grad_clip!r} must be positive")
  if config.augment.crop_padding < 0:
    raise ConfigError(f"config.augment.crop_padding={config.augment.crop_padding!r} must be >= 0")
  for field in ("momentum", "label_smoothing"):
    if not 0.0 <= config.optim[field] < 1.0:
      raise ConfigError(f"config.optim.{field}={config.optim[field]!r} must be in [0, 1)")
  names = {f"val/{k}" for k in ("loss", *metrics.classification_metrics([0, 1], [[1.0, 0.0], [0.0, 1.0]]))}
  if config.eval.best_metric not in names:
    raise ConfigError(f"config.eval.best_metric={config.eval.best_metric!r} is not one of {sorted(names)}")


def cross_entropy(logits, labels, label_smoothing: float):
  """Per-example cross-entropy against smoothed targets (1 - a) * one_hot(labels) + a / C."""
  hard = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  uniform = -jnp.mean(jax.nn.log_softmax(logits), axis=-1)
  return (1.0 - label_smoothing) * hard + label_smoothing * uniform


def augment(images, key, crop_padding: int, flip: bool):
  """Random crops of the zero-padded images (translations by up to `crop_padding` pixels), optional h-flips.

  Padding is black (pixel value 0, i.e. -1 after scaling), the same fill the pipeline pads 28x28 images with.
  Draws depend on the global batch, never on how it is split over devices.
  """
  num, height, width, channels = images.shape
  shift_key, flip_key = jax.random.split(key)
  pad = ((0, 0), (crop_padding, crop_padding), (crop_padding, crop_padding), (0, 0))
  padded = jnp.pad(images, pad, constant_values=-1.0)
  offsets = jax.random.randint(shift_key, (num, 2), 0, 2 * crop_padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

  images = jax.vmap(crop)(padded, offsets)
  if flip:
    images = jnp.where(jax.random.bernoulli(flip_key, shape=(num, 1, 1, 1)), images[:, :, ::-1], images)
  return images


def make_optimizer(config) -> optax.GradientTransformation:
  """Clipped SGD with momentum (coupled L2) or AdamW on the warmup+cosine schedule; only kernels decay."""
  schedule = state_lib.learning_rate(config.train)

  def kernels(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)

  if config.optim.name == "sgd":
    optimizer = optax.chain(
      optax.add_decayed_weights(config.train.weight_decay, mask=kernels),
      optax.sgd(schedule, momentum=config.optim.momentum, nesterov=config.optim.nesterov),
    )
  else:
    optimizer = optax.adamw(schedule, weight_decay=config.train.weight_decay, mask=kernels)
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip), optimizer)


def init_state(config, model: ResNet, optimizer: optax.GradientTransformation) -> BaselineState:
  """A fresh state from `config.seed`. Trace it under jit: eager is slow."""
  size, channels = config.data.image_size, config.data.num_channels
  variables = model.init(jax.random.key(config.seed), jnp.zeros((1, size, size, channels)))
  params = variables["params"]
  return BaselineState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], optimizer.init(params))


def abstract_state(config, model: ResNet, optimizer: optax.GradientTransformation, sharding) -> BaselineState:
  """Shapes, dtypes and shardings of the state, without allocating it (for restores)."""
  shapes = jax.eval_shape(lambda: init_state(config, model, optimizer))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def make_train_step(config, model, optimizer, mesh):
  """The jitted, data-parallel train step: (state, batch) -> (state, metrics); BatchNorm sees the global batch."""
  base_key = jax.random.key(config.seed)
  lr_schedule = state_lib.learning_rate(config.train)

  def train_step(state, batch):
    images = augment(
      batch["image"], jax.random.fold_in(base_key, state.step), config.augment.crop_padding, config.augment.flip
    )

    def loss_fn(params):
      logits, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      loss = jnp.mean(cross_entropy(logits, batch["label"], config.optim.label_smoothing))
      return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    step_metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": lr_schedule(state.step),
    }
    return new_state, step_metrics

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def make_predict_step(model, mesh):
  """The jitted inference step: (state, images) -> softmax probabilities, replicated to every process."""

  def predict_step(state, images):
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)
    return jax.nn.softmax(logits)

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(predict_step, in_shardings=(rep, data), out_shardings=rep)


def predict(predict_step, state, split, config, mesh, stop: int | None = None) -> np.ndarray:
  """Softmax probabilities [N, C] for the first `stop` examples of `split` (all when None)."""
  probs = []
  for batch in pipeline.eval_batches(split, config.eval.batch_size, 0, stop):
    images = sharding.shared_to_global(mesh, {"image": batch["image"]})["image"]
    probs.append(np.asarray(predict_step(state, images))[batch["valid"]])
  return np.concatenate(probs)


def score(labels, probs) -> dict:
  """classification_metrics plus the mean negative log-likelihood ('loss')."""
  nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
  return {**metrics.classification_metrics(labels, probs), "loss": float(nll)}


def evaluate(predict_step, state, split, config, mesh) -> dict:
  """Validation metrics on the first `config.eval.num_examples` images of the eval split."""
  stop = min(config.eval.num_examples, len(split.labels))
  probs = predict(predict_step, state, split, config, mesh, stop)
  return {f"val/{k}": v for k, v in score(split.labels[:stop], probs).items()}


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir`, resuming from its newest checkpoint, and writes `metrics_val.json`.

  metrics_val.json holds the best checkpoint's metrics on the whole eval split, `n` and `seconds_per_image`
  (inference with a warm jit, batches of config.eval.batch_size). Returns the final BaselineState.
  """
  configcheck.check(config)
  check_baseline(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, "config.train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, "config.eval.batch_size")
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))

  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  trainer.record_skipped(workdir, train_split.skipped + eval_split.skipped)

  model = ResNet(ResNetConfig.from_config(config))
  optimizer = make_optimizer(config)
  rep = sharding.replicated(mesh)
  abstract = abstract_state(config, model, optimizer, rep)
  ckpts = checkpoint.Checkpoints(workdir, config.train.keep_checkpoints, config.eval.best_metric, config.eval.best_mode)
  # Init runs once on tiny inputs: at XLA's default optimisation level the CPU took ~40 s to compile its ~20
  # random initialisers, at level 0 ~8 s (2-core reference CPU, measured); values agree to float32 rounding.
  init = jax.jit(
    functools.partial(init_state, config, model, optimizer),
    out_shardings=rep,
    compiler_options={"xla_backend_optimization_level": 0},
  )
  state = trainer.restore_or_init(ckpts, abstract, init, workdir)
  train_step = make_train_step(config, model, optimizer, mesh)
  predict_step = make_predict_step(model, mesh)
  state = trainer.train_loop(
    config,
    workdir,
    mesh,
    state,
    train_step,
    lambda s: evaluate(predict_step, s, eval_split, config, mesh),
    ckpts,
    train_split,
  )
  if int(state.step) == config.train.steps:
    _write_best_metrics(config, workdir, predict_step, abstract, eval_split, mesh)
  return state


def _write_best_metrics(config, workdir: str, predict_step, abstract, eval_split, mesh) -> None:
  """Scores the best checkpoint on the whole eval split and times its inference into metrics_val.json."""
  best, _, best_step = checkpoint.restore_for_inference(workdir, abstract, "best")
  first = next(pipeline.eval_batches(eval_split, config.eval.batch_size))
  jax.block_until_ready(predict_step(best, sharding.shared_to_global(mesh, {"image": first["image"]})["image"]))
  start = time.perf_counter()
  probs = predict(predict_step, best, eval_split, config, mesh)
  seconds_per_image = (time.perf_counter() - start) / len(probs)
  result = {
    **score(eval_split.labels, probs),
    "split": config.data.eval_split,
    "step": int(best_step),
    "n": len(probs),
    "seconds_per_image": seconds_per_image,
  }
  log.info("Best checkpoint (step %d) on %s: %s", best_step, config.data.eval_split, result)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "metrics_val.json"), result)


def evaluate_split(config, workdir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(labels [N], softmax probabilities [N, C]) of the best checkpoint in `workdir` on `split`."""
  configcheck.check(config)
  check_baseline(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.eval.batch_size, "config.eval.batch_size")
  model = ResNet(ResNetConfig.from_config(config))
  abstract = abstract_state(config, model, make_optimizer(config), sharding.replicated(mesh))
  state, _, _ = checkpoint.restore_for_inference(workdir, abstract, "best")
  data = pipeline.load_split(config.data, split)
  return data.labels, predict(make_predict_step(model, mesh), state, data, config, mesh)
