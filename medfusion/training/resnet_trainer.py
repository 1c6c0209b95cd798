"""The ResNet trainer: a discriminative baseline trained with cross-entropy on the diffusion model's input pipeline.

`train_and_evaluate(config, workdir)` runs the loop the diffusion trainer runs (training/loop.py) and scores with
the `classification` evaluator (medfusion.metrics.classification_metrics), so a comparison table's rows come from
one code path.
"""

import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medfusion import modeldir, models, runtime, sharding
from medfusion.data import pipeline
from medfusion.errors import ConfigError
from medfusion.evaluation import evaluators, resnet_inference
from medfusion.models.resnet import ResNet, ResNetConfig
from medfusion.training import loop, optim
from medfusion.writers import write_json_atomic, write_npz_atomic

log = logging.getLogger("medfusion")

OPTIMIZERS = ("sgd", "adamw")


@flax.struct.dataclass
class BaselineState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def check_baseline(config) -> None:
  """Raises ConfigError for the first invalid field that only the ResNet trainer reads."""
  if config.optim.name not in OPTIMIZERS:
    raise ConfigError(f"config.optim.name={config.optim.name!r} is not one of {OPTIMIZERS}")
  if config.augment.crop_padding < 0:
    raise ConfigError(f"config.augment.crop_padding={config.augment.crop_padding!r} must be >= 0")
  for field in ("momentum", "label_smoothing"):
    if not 0.0 <= config.optim[field] < 1.0:
      raise ConfigError(f"config.optim.{field}={config.optim[field]!r} must be in [0, 1)")
  ResNetConfig.from_config(config)


def cross_entropy(logits, labels, label_smoothing: float):
  """Per-example cross-entropy against smoothed targets (1 - a) * one_hot(labels) + a / C."""
  hard = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  uniform = -jnp.mean(jax.nn.log_softmax(logits), axis=-1)
  return (1.0 - label_smoothing) * hard + label_smoothing * uniform


def augment(images, key, crop_padding: int):
  """Random crops of the zero-padded images (translations by up to `crop_padding` pixels); flips and rotations
  are the pipeline's (config.data.augment), shared with the diffusion trainer.

  Padding is black (pixel value 0, i.e. -1 after scaling), the same fill the pipeline pads 28x28 images with.
  Draws depend on the global batch, never on how it is split over devices.
  """
  num, height, width, channels = images.shape
  pad = ((0, 0), (crop_padding, crop_padding), (crop_padding, crop_padding), (0, 0))
  padded = jnp.pad(images, pad, constant_values=-1.0)
  offsets = jax.random.randint(key, (num, 2), 0, 2 * crop_padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

  return jax.vmap(crop)(padded, offsets)


def make_optimizer(config) -> optax.GradientTransformation:
  """Clipped SGD with momentum (coupled L2) or AdamW on the warmup+cosine schedule; only kernels decay."""
  schedule = optim.learning_rate(config.train)

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
  variables = models.init_variables(config, model)
  params = variables["params"]
  return BaselineState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], optimizer.init(params))


def abstract_state(config, model: ResNet, optimizer: optax.GradientTransformation, sharding_) -> BaselineState:
  """Shapes, dtypes and shardings of the state, without allocating it (for restores)."""
  return sharding.abstract(lambda: init_state(config, model, optimizer), sharding_)


def variables(state: BaselineState) -> dict:
  """What the model (and the classification evaluator) applies: parameters and BatchNorm statistics."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def make_train_step(config, model, optimizer, mesh):
  """The jitted, data-parallel train step: (state, batch) -> (state, metrics); BatchNorm sees the global batch."""
  base_key = jax.random.key(config.seed)
  lr_schedule = optim.learning_rate(config.train)

  def train_step(state, batch):
    images = augment(batch["image"], jax.random.fold_in(base_key, state.step), config.augment.crop_padding)

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


def make_parts(config, mesh) -> loop.Parts:
  model = models.make_model(config)
  optimizer = make_optimizer(config)
  rep = sharding.replicated(mesh)
  return loop.Parts(
    abstract_state=abstract_state(config, model, optimizer, rep),
    init_state=lambda: runtime.run_once(lambda: init_state(config, model, optimizer), rep),
    train_step=make_train_step(config, model, optimizer, mesh),
    variables=variables,
    predict_fn=resnet_inference.make_predict_step(config, mesh),
  )


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir`, resuming from its newest checkpoint, and writes `metrics_val.json`.

  metrics_val.json holds the best checkpoint's metrics on the whole eval split and on each of its halves
  (`halves`: the evaluator's `half` chose the checkpoint on one, the other reports it), `n` and `seconds_per_image`
  (inference with a warm jit, batches of the classification evaluator's batch size). Returns the final state.
  """
  state = loop.train_and_evaluate(config, workdir, make_parts)
  if int(state.step) == config.train.steps:
    _write_best_metrics(config, workdir)
  return state


def _batch_size(config) -> int:
  """The classification evaluator's batch size (the ResNet's inference batch)."""
  return next(e.batch_size for e in config.evals.values() if e.type == "classification")


def _write_best_metrics(config, workdir: str) -> None:
  """Scores the best checkpoint on the whole eval split and times its inference into metrics_val.json; the
  probabilities go to predictions_val.npz (labels, probs) for comparisons computed later."""
  mesh = sharding.make_mesh()
  best = modeldir.load(config, workdir)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  predict_step, batch_size = resnet_inference.make_predict_step(config, mesh), _batch_size(config)
  first = next(pipeline.eval_batches(eval_split, batch_size))
  images = sharding.shared_to_global(mesh, {"image": first["image"]})["image"]
  jax.block_until_ready(predict_step(best.params, images))
  start = time.perf_counter()
  probs = resnet_inference.predict(predict_step, best.params, eval_split, batch_size, mesh)
  seconds_per_image = (time.perf_counter() - start) / len(probs)
  result = {
    **evaluators.classification_report(eval_split.labels, probs),
    "split": config.data.eval_split,
    "step": best.step,
    "checkpoint": best.which,
    "n": len(probs),
    "seconds_per_image": seconds_per_image,
    "halves": {
      name: evaluators.classification_report(eval_split.labels[rows], probs[rows])
      for name, rows in zip(pipeline.HALVES[1:], pipeline.half_split(eval_split.labels), strict=True)
      if len(rows)
    },
  }
  log.info("Best checkpoint (step %d) on %s: %s", best.step, config.data.eval_split, result)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "metrics_val.json"), result)
    write_npz_atomic(os.path.join(workdir, "predictions_val.npz"), labels=eval_split.labels, probs=probs)


def evaluate_split(config, workdir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(labels [N], softmax probabilities [N, C]) of the best checkpoint in `workdir` on `split`."""
  mesh = sharding.make_mesh()
  batch_size = _batch_size(config)
  best = modeldir.load(config, workdir)
  data = pipeline.load_split(config.data, split)
  return data.labels, resnet_inference.predict(
    resnet_inference.make_predict_step(config, mesh), best.params, data, batch_size, mesh
  )
