"""Samples and counterfactuals of a tiny random model; run as a script (by test_explanations.py, in a subprocess
with simulated devices set through XLA_FLAGS before JAX starts) it prints them as JSON."""

import json

import jax
import numpy as np
from train_losses_script import tiny_config

from medfusion import runtime
from medfusion.explanations import counterfactual
from medfusion.explanations import sampler as sampler_lib
from medfusion.training import state as state_lib


def setup(batch_size: int = 8):
  """(config, params, images) of a tiny perturbed random model with sampler batches of `batch_size`."""
  config = tiny_config("")
  config.explain.update(batch_size=batch_size, steps=6, guidance=1.5)
  model = state_lib.make_model(config)
  params = runtime.run_once(lambda: state_lib.init_params(config, model))
  rng = np.random.default_rng(3)  # host-side noise: jax.random per leaf would compile for ~25 s
  params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
  images = np.random.default_rng(4).uniform(-0.8, 0.8, (3, 32, 32, 1)).astype(np.float32)
  return config, params, images


def outputs(batch_size: int = 8) -> dict:
  config, params, images = setup(batch_size)
  sampler = sampler_lib.Sampler(config, params)
  samples = sampler.sample(np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]), np.arange(10))  # 10: a padded last batch
  spec = counterfactual.CounterfactualSpec.from_config(config, "ddim_inversion")
  targets = np.broadcast_to(np.arange(2), (3, 2))
  edited = counterfactual.counterfactuals(sampler, spec, images, np.array([5, 9, 2]), targets)
  return {"devices": jax.device_count(), "samples": samples.tolist(), "counterfactuals": edited.tolist()}


if __name__ == "__main__":
  print(json.dumps(outputs()))
