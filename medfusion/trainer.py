"""The training loop: `train_and_evaluate(config, workdir)` trains, validates, checkpoints and resumes."""

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from medfusion import checkpoint, configcheck, sharding
from medfusion import state as state_lib
from medfusion.data import pipeline
from medfusion.diffusion import losses, schedules
from medfusion.writers import MetricWriter, write_json_atomic

log = logging.getLogger("medfusion")


def make_train_step(config, model, optimizer, mesh):
  """The jitted, data-parallel train step: (state, batch) -> (state, metrics)."""
  schedule = schedules.Schedule.from_config(config.diffusion, config.data.image_size)
  base_key = jax.random.key(config.seed)
  null_class = config.data.num_classes
  lr_schedule = state_lib.learning_rate(config.train)

  def train_step(state, batch):
    step_key = jax.random.fold_in(base_key, state.step)
    loss_key, dropout_key = jax.random.split(step_key)

    def loss_fn(params):
      def apply_fn(z, logsnr, labels):
        return model.apply({"params": params}, z, logsnr, labels, train=True, rngs={"dropout": dropout_key})

      loss, _ = losses.denoising_loss(
        apply_fn,
        batch["image"],
        batch["label"],
        loss_key,
        schedule,
        config.diffusion,
        null_class,
        config.diffusion.label_dropout,
      )
      return loss

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with a warm-up so early checkpoints are not dominated by the random initialisation.
    decay = jnp.minimum(config.train.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr_schedule(state.step)}
    return new_state, metrics

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def make_eval_step(config, model, mesh):
  """Summed conditional denoising loss of the EMA model on fixed draws: (params, batch, key) -> (sum, count)."""
  schedule = schedules.Schedule.from_config(config.diffusion, config.data.image_size)

  def eval_step(params, batch, key):
    def apply_fn(z, logsnr, labels):
      return model.apply({"params": params}, z, logsnr, labels)

    _, per_example = losses.denoising_loss(
      apply_fn, batch["image"], batch["label"], key, schedule, config.diffusion, config.data.num_classes, 0.0
    )
    valid = batch["valid"].astype(jnp.float32)
    return jnp.sum(per_example * valid), jnp.sum(valid)

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(eval_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep))


def evaluate(eval_step, params, split, config, mesh) -> dict:
  """Validation loss on the first `config.eval.num_examples` images, the same draws every time."""
  stop = min(config.eval.num_examples, len(split.labels))
  eval_key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)
  total = count = 0.0
  for i, batch in enumerate(pipeline.eval_batches(split, config.eval.batch_size, 0, stop)):
    batch = {k: batch[k] for k in ("image", "label", "valid")}
    s, n = eval_step(params, sharding.shared_to_global(mesh, batch), jax.random.fold_in(eval_key, i))
    total, count = total + float(s), count + float(n)
  return {"val/loss": total / max(count, 1.0)}


class Preemption:
  """First SIGTERM asks the loop to checkpoint and stop; a second one exits at once."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    if self.requested:
      os._exit(128 + signum)
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final TrainState."""
  configcheck.check(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, "config.train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, "config.eval.batch_size")
  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
  record_skipped(workdir, train_split.skipped + eval_split.skipped)

  model = state_lib.make_model(config)
  optimizer = state_lib.make_optimizer(config.train)
  rep = sharding.replicated(mesh)
  ckpts = checkpoint.Checkpoints(workdir, config.train.keep_checkpoints, config.eval.best_metric, config.eval.best_mode)
  abstract = state_lib.abstract_state(config, model, optimizer, rep)
  state = restore_or_init(ckpts, abstract, lambda: state_lib.jit_init_state(config, model, optimizer, rep), workdir)

  train_step = make_train_step(config, model, optimizer, mesh)
  eval_step = make_eval_step(config, model, mesh)
  return train_loop(
    config,
    workdir,
    mesh,
    state,
    train_step,
    lambda s: evaluate(eval_step, s.ema_params, eval_split, config, mesh),
    ckpts,
    train_split,
  )


def restore_or_init(ckpts, abstract_state, init_fn, workdir: str):
  """The newest checkpoint in `workdir` (restored to `abstract_state`), else a fresh `init_fn()`; logs which."""
  restored = ckpts.restore_latest(abstract_state)
  if restored is None:
    state = init_fn()
    log.info("Starting training from scratch in %s", workdir)
  else:
    state, _ = restored
    log.info("Resumed from step %d in %s", int(state.step), workdir)
  log.info("Model: %s parameters; %d devices", f"{state_lib.count_params(state.params):,}", jax.device_count())
  return state


def train_loop(config, workdir: str, mesh, state, train_step, evaluate_fn, ckpts, train_split):
  """The loop both trainers share: steps from `state.step` to `config.train.steps`, logging, validation
  (`evaluate_fn(state) -> metrics`, which also picks the best checkpoint), checkpoints and SIGTERM handling."""
  start = int(state.step)
  writer = MetricWriter(workdir)
  batches = pipeline.train_batches(
    train_split, config.train.batch_size, config.seed, start, jax.process_index(), jax.process_count()
  )
  meta = {"data": {"seed": config.seed, "examples_seen": 0}}
  preemption = Preemption()
  bar = tqdm.tqdm(
    total=config.train.steps,
    initial=start,
    desc="train",
    unit="step",
    disable=not config.train.progress_bar or jax.process_index() != 0,
  )
  tick, tick_step = time.perf_counter(), start
  try:
    for step in range(start + 1, config.train.steps + 1):
      state, metrics = train_step(state, sharding.to_global(mesh, next(batches)))
      bar.update(1)
      meta["data"]["examples_seen"] = step * config.train.batch_size
      if step % config.train.log_every == 0 or step == config.train.steps:
        metrics = jax.device_get(metrics)
        rate = (step - tick_step) / (time.perf_counter() - tick)
        metrics.update({"steps_per_s": rate, "images_per_s": rate * config.train.batch_size})
        writer.write(step, metrics)
        bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", img_s=f"{rate * config.train.batch_size:.0f}")
        if not np.isfinite(metrics["loss"]):
          raise FloatingPointError(f"training loss is {metrics['loss']} at step {step}; lower the learning rate")
        tick, tick_step = time.perf_counter(), step
      if step % config.train.eval_every == 0 or step == config.train.steps:
        eval_metrics = evaluate_fn(state)
        writer.write(step, eval_metrics)
        ckpts.save_if_best(step, state, meta, eval_metrics)
      if step % config.train.checkpoint_every == 0 or step == config.train.steps or preemption.requested:
        ckpts.save(step, state, meta)
      if preemption.requested:
        log.warning("SIGTERM: saved a checkpoint at step %d; exiting", step)
        break
  finally:
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()
    preemption.restore()
  return state


def record_skipped(workdir: str, skipped) -> None:
  """Unreadable images skipped under `data.on_bad_file=skip` are counted and listed in the workdir."""
  if skipped and jax.process_index() == 0:
    log.warning("Skipped %d unreadable image files; see %s/skipped_files.txt", len(skipped), workdir)
    with open(os.path.join(workdir, "skipped_files.txt"), "w") as f:
      f.write("\n".join(skipped) + "\n")
