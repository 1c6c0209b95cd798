"""The losses of the first train steps of a tiny model; run as a script (by test_train.py, in a subprocess with
simulated devices set through XLA_FLAGS before JAX starts) it prints them as JSON."""

import json
import sys

import jax

from configs import pneumoniamnist
from medfusion import runtime, sharding
from medfusion.data import pipeline
from medfusion.training import diffusion_trainer
from medfusion.training import state as state_lib


def tiny_config(tfds_dir: str):
  """configs/pneumoniamnist.py:smoke with a narrower UNet and no attention but the middle one's: the same code paths,
  a fraction of the compile time. (Two levels: a one-level UNet's middle attention runs over all 32x32 positions,
  which made its train step ~5x slower.)"""
  config = pneumoniamnist.get_config("smoke")
  config.data.tfds_data_dir = tfds_dir
  config.model.channels = 8
  config.model.channel_mult = (1, 2)
  config.model.attention_resolutions = ()
  return config


def losses(tfds_dir: str, steps: int) -> list[float]:
  """The losses of a run of `steps` steps (config.train.steps = steps: its train step is the one every other
  `steps`-step run of tiny_config compiles)."""
  config = tiny_config(tfds_dir)
  config.train.steps = steps
  return [float(m["loss"]) for m in step_metrics(config, steps)]


def step_metrics(config, steps: int) -> list[dict]:
  """The metrics the train step returns at each of the first `steps` steps of `config`."""
  mesh = sharding.make_mesh()
  model, optimizer = state_lib.make_model(config), state_lib.make_optimizer(config.train)
  state = runtime.run_once(lambda: state_lib.init_state(config, model, optimizer), sharding.replicated(mesh))
  step_fn = diffusion_trainer.make_train_step(config, model, optimizer, mesh)
  batches = pipeline.train_batches(pipeline.load_split(config.data, "train"), config.train.batch_size, config.seed)
  result = []
  for _ in range(steps):
    state, metrics = step_fn(state, sharding.to_global(mesh, next(batches)))
    result.append({k: float(v) for k, v in metrics.items()})
  return result


if __name__ == "__main__":
  print(json.dumps({"devices": jax.device_count(), "losses": losses(sys.argv[1], int(sys.argv[2]))}))
