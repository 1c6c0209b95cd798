"""Prints the smoke model's error tensor for fixed images as JSON (run by test_score.py in a subprocess, so the
number of simulated devices can be set through XLA_FLAGS before JAX starts)."""

import json

import jax
import numpy as np

from configs import default
from medfusion import state as state_lib
from medfusion.classify import classifier


def main():
  config = default.smoke(default.get_config())
  config.classify.batch_size = 8
  model = state_lib.make_model(config)
  params = state_lib.jit_init_state(config, model, state_lib.make_optimizer(config.train), None).params
  rng = np.random.default_rng(3)  # host-side noise: jax.random per leaf would compile for ~25 s
  params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
  images = np.asarray(jax.random.uniform(jax.random.key(4), (8, 32, 32, 1), minval=-1, maxval=1))
  tally = classifier.DiffusionClassifier(config, params).score(images, np.arange(100, 108))
  print(
    json.dumps(
      {"devices": jax.device_count(), "mean_errors": tally.mean_errors.tolist(), "votes": tally.votes.tolist()}
    )
  )


if __name__ == "__main__":
  main()
