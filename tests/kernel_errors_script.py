"""Mean errors and votes of a tiny random model on fixed images; run as a script (by test_score.py, in a
subprocess with simulated devices set through XLA_FLAGS before JAX starts) it prints them as JSON."""

import json

import jax
import numpy as np
from train_losses_script import tiny_config

from medfusion import runtime
from medfusion.classify import classifier
from medfusion.training import state as state_lib


def errors() -> dict:
  config = tiny_config("")
  config.classify.batch_size = 8
  model = state_lib.make_model(config)
  params = runtime.run_once(lambda: state_lib.init_params(config, model))
  rng = np.random.default_rng(3)  # host-side noise: jax.random per leaf would compile for ~25 s
  params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
  images = np.random.default_rng(4).uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32)
  tally = classifier.DiffusionClassifier(config, params).score(images, np.arange(100, 108))
  return {"devices": jax.device_count(), "mean_errors": tally.mean_errors.tolist(), "votes": tally.votes.tolist()}


if __name__ == "__main__":
  print(json.dumps(errors()))
