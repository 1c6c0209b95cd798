"""Prints the losses of the first steps of smoke training as JSON (run in a subprocess by test_train.py, so
that the number of simulated devices can be set through XLA_FLAGS before JAX starts)."""

import json
import sys

import jax

from configs import default
from medfusion import sharding, trainer
from medfusion import state as state_lib
from medfusion.data import pipeline


def main(tfds_dir: str, steps: int):
  config = default.smoke(default.get_config())
  config.data.tfds_data_dir = tfds_dir
  mesh = sharding.make_mesh()
  model, optimizer = state_lib.make_model(config), state_lib.make_optimizer(config.train)
  state = state_lib.jit_init_state(config, model, optimizer, sharding.replicated(mesh))
  step_fn = trainer.make_train_step(config, model, optimizer, mesh)
  batches = pipeline.train_batches(pipeline.load_split(config.data, "train"), config.train.batch_size, config.seed)
  losses = []
  for _ in range(steps):
    state, metrics = step_fn(state, sharding.to_global(mesh, next(batches)))
    losses.append(float(metrics["loss"]))
  print(json.dumps({"devices": jax.device_count(), "losses": losses}))


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
