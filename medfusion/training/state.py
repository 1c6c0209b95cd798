"""The diffusion model's train state, its optimizer, and how to build it (or only its shapes) from a config."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from medfusion import sharding as sharding_lib
from medfusion.models import init_params, make_denoiser
from medfusion.training import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW on the learning-rate schedule with global-norm gradient clipping."""
  return optax.chain(
    optax.clip_by_global_norm(train_config.grad_clip),
    optax.adamw(optim.learning_rate(train_config), weight_decay=train_config.weight_decay),
  )


def make_model(config):
  return make_denoiser(config)


def init_state(config, model, optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh train state; the EMA starts as a copy of the parameters. Trace it under jit: eager is slow."""
  params = init_params(config, model)
  return TrainState(jnp.zeros((), jnp.int32), params, params, optimizer.init(params))


def abstract_state(config, model, optimizer: optax.GradientTransformation, sharding) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without allocating it (for restores)."""
  return sharding_lib.abstract(lambda: init_state(config, model, optimizer), sharding)
