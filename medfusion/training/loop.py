"""What every trainer shares: the run's prologue, restore-or-init, interrupts, and the train loop itself.

A trainer (`diffusion.py`, `resnet.py`) supplies `Parts`: its state's shapes and initialiser, its jitted train
step and the variables its evaluators read; `train_and_evaluate` here runs steps, logs, evaluates, keeps the best
checkpoint, saves on interrupts and resumes.
"""

import collections
import dataclasses
import json
import logging
import os
import signal
import time

import jax
import jax.experimental.multihost_utils
import numpy as np
import tqdm

from medfusion import checkpoint, sharding
from medfusion.data import pipeline
from medfusion.errors import ConfigError, Interrupted
from medfusion.evaluation import evaluators as evaluators_lib
from medfusion.writers import MetricWriter, write_json_atomic

log = logging.getLogger("medfusion")

STEPS_IN_FLIGHT = 2  # steps dispatched ahead of the last finished one: keeps the device busy, the bar honest


def check_train_config(train) -> None:
  """Raises ConfigError for the first invalid field of config.train that the loop reads."""
  for field in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "learning_rate"):
    if not train[field] > 0:
      raise ConfigError(f"config.train.{field}={train[field]!r} must be positive")
  if not train.checkpoint_minutes > 0:
    raise ConfigError(f"config.train.checkpoint_minutes={train.checkpoint_minutes!r} must be positive")
  if train.warmup_steps < 0:
    raise ConfigError(f"config.train.warmup_steps={train.warmup_steps!r} must be >= 0")
  if not train.grad_clip > 0:
    raise ConfigError(f"config.train.grad_clip={train.grad_clip!r} must be positive")


class Interrupts:
  """SIGTERM (preemption) and SIGINT (Ctrl-C): the first asks the loop to checkpoint and stop after the step in
  progress; a second one exits at once. Installed for the whole run, compilation included."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None
    self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

  @property
  def requested(self) -> bool:
    return self.received is not None

  def _handle(self, signum, frame):
    if self.requested:
      os._exit(128 + signum)
    self.received = signal.Signals(signum).name
    with tqdm.tqdm.external_write_mode():  # on a line of its own, not inside the progress bar's
      log.warning("%s: finishing the current step, then saving a checkpoint (again to exit at once)", self.received)

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


@dataclasses.dataclass(frozen=True)
class Parts:
  """What a trainer supplies to the shared loop."""

  abstract_state: object  # shapes, dtypes and shardings of the train state (for restores)
  init_state: object  # () -> a fresh train state
  train_step: object  # jitted (state, batch) -> (state, metrics with a 'loss')
  variables: object  # state -> what the evaluators apply (the EMA parameters; params and batch statistics)
  predict_fn: object  # what the evaluators call with those variables (the denoiser's apply; the ResNet predict step)


def train_and_evaluate(config, workdir: str, make_parts) -> object:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; `make_parts(config, mesh)` -> Parts.
  Returns the final train state."""
  interrupts = Interrupts()
  try:
    mesh, train_split, eval_split = start_run(config, workdir)
    parts = make_parts(config, mesh)
    t = config.train
    ckpts = checkpoint.Checkpoints(workdir, t.keep_checkpoints, t.best_metric, t.best_mode)
    state = restore_or_init(ckpts, parts.abstract_state, parts.init_state, workdir, interrupts)
    evaluators = evaluators_lib.build(config, eval_split, mesh, parts.predict_fn)
    return train_loop(config, workdir, mesh, state, parts, evaluators, ckpts, train_split, interrupts)
  finally:
    interrupts.restore()


def start_run(config, workdir: str):
  """The prologue of every trainer: (mesh, train split, eval split), with config.json written to the workdir once
  the data has loaded (bad data fails before anything is written)."""
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, "config.train.batch_size")
  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
  skipped = train_split.skipped + eval_split.skipped
  if skipped and jax.process_index() == 0:
    log.warning("Skipped %d unreadable image files; see %s/skipped_files.txt", len(skipped), workdir)
    with open(os.path.join(workdir, "skipped_files.txt"), "w") as f:
      f.write("\n".join(skipped) + "\n")
  return mesh, train_split, eval_split


def restore_or_init(ckpts, abstract_state, init_fn, workdir: str, interrupts: Interrupts):
  """The newest checkpoint in `workdir` (restored to `abstract_state`), else a fresh `init_fn()`; logs which."""
  restored = ckpts.restore_latest(abstract_state)
  if restored is None:
    state = init_fn()
    log.info("Starting training from scratch in %s", workdir)
  else:
    state, _ = restored
    log.info("Resumed from step %d in %s", int(state.step), workdir)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("Model: %s parameters; %d devices", f"{params:,}", jax.device_count())
  if interrupts.requested:
    raise Interrupted(f"{interrupts.received} before the first step: nothing new to save in {workdir}")
  return state


def train_loop(config, workdir: str, mesh, state, parts: Parts, evaluators, ckpts, train_split, interrupts):
  """Steps from `state.step` to `config.train.steps`: logging, the evaluators (`evaluators_lib.run(e,
  parts.variables(state))`), the best checkpoint by `config.train.best_metric`, checkpoints every
  `checkpoint_every` steps and every `checkpoint_minutes`, and interrupts. Returns the final state."""
  start, last = int(state.step), config.train.steps
  writer = MetricWriter(workdir, resume_step=start)
  batches = pipeline.train_batches(
    train_split,
    config.train.batch_size,
    config.seed,
    start,
    jax.process_index(),
    jax.process_count(),
    config.data.augment,
  )
  meta = {"data": {"seed": config.seed, "examples_seen": 0}}
  bar = tqdm.tqdm(
    total=last, initial=start, desc="train", unit="step", disable=not config.train.progress_bar or jax.process_index()
  )
  in_flight = collections.deque()
  tick, tick_step, saved_at = time.perf_counter(), start, time.monotonic()
  try:
    for step in range(start + 1, last + 1):
      state, metrics = parts.train_step(state, sharding.to_global(mesh, next(batches)))
      in_flight.append(metrics)
      if len(in_flight) > STEPS_IN_FLIGHT:
        jax.block_until_ready(in_flight.popleft())
        bar.update(1)
      meta["data"]["examples_seen"] = step * config.train.batch_size
      if step % config.train.log_every == 0 or step == last:
        metrics = jax.device_get(metrics)
        rate = (step - tick_step) / (time.perf_counter() - tick)
        metrics.update({"steps_per_s": rate, "images_per_s": rate * config.train.batch_size})
        writer.write(step, metrics)
        bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", img_s=f"{rate * config.train.batch_size:.0f}")
        if not np.isfinite(metrics["loss"]):
          raise FloatingPointError(f"training loss is {metrics['loss']} at step {step}; lower the learning rate")
        tick, tick_step = time.perf_counter(), step
      due_by_time = time.monotonic() - saved_at > 60 * config.train.checkpoint_minutes
      stop, due_by_time = on_any_process(interrupts.requested, due_by_time)
      eval_metrics = {}
      for evaluator in evaluators:
        if evaluators_lib.due(evaluator, step, last) and not stop:  # an interrupt saves first
          eval_metrics.update(evaluators_lib.run(evaluator, parts.variables(state)))
      if eval_metrics:
        writer.write(step, eval_metrics)
        ckpts.save_if_best(step, state, meta, eval_metrics)
      if step % config.train.checkpoint_every == 0 or step == last or due_by_time or stop:
        ckpts.save(step, state, meta)
        saved_at = time.monotonic()
      if stop:
        jax.block_until_ready(state)
        why = interrupts.received or "an interrupt of another process"
        log.warning("%s: saved a checkpoint at step %d; rerun the same command to resume", why, step)
        break
    jax.block_until_ready(state)
    bar.update(len(in_flight))
  finally:
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()
  return state


def finished_summary(workdir: str, best_metric: str, eval_split: str, diffusion: bool) -> str:
  """Where the finished run's best checkpoint is, its metric, and what to run next."""
  best = os.path.join(workdir, "best")
  steps = sorted(int(d) for d in os.listdir(best) if d.isdigit()) if os.path.isdir(best) else []
  if not steps:
    where = f"no best checkpoint ({best_metric} was never logged); the latest is in {workdir}/checkpoints"
  else:
    values = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        record = json.loads(line)
        if record["step"] == steps[-1] and best_metric in record:
          values.append(record[best_metric])
    value = f"{best_metric} = {values[-1]:.4g}" if values else f"{best_metric} not logged"
    where = f"best checkpoint: {best}/{steps[-1]} (step {steps[-1]}, {value})"
  if diffusion:
    then = (
      f"next: python -m medfusion.score --workdir={workdir} --split={eval_split} "
      f"--output={workdir}/scores_{eval_split} (then medfusion.explain, or medfusion.export to ship it)"
    )
  else:
    then = f"its metrics on the whole eval split: {workdir}/metrics_val.json"
  return f"Training finished. {where}\n{then}"


def on_any_process(*flags: bool) -> tuple[bool, ...]:
  """Each flag or-ed over all processes, so that every process takes the same branch: saves and evaluations are
  collective, and a signal or a clock seen by one process alone would leave the others waiting for it."""
  if jax.process_count() == 1:
    return flags
  gathered = jax.experimental.multihost_utils.process_allgather(np.asarray(flags))
  return tuple(bool(f) for f in gathered.any(axis=0))
