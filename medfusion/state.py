"""The train state, its optimizer, and how to build it (or only its shapes) from a config."""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from medfusion.models.unet import UNet, UNetConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def learning_rate(train_config) -> optax.Schedule:
  """Linear warmup, then cosine decay to zero at the last step."""
  return optax.warmup_cosine_decay_schedule(
    0.0,
    train_config.learning_rate,
    train_config.warmup_steps,
    max(train_config.steps, train_config.warmup_steps + 1),
  )


def make_optimizer(train_config) -> optax.GradientTransformation:
  """AdamW on the learning-rate schedule with global-norm gradient clipping."""
  return optax.chain(
    optax.clip_by_global_norm(train_config.grad_clip),
    optax.adamw(learning_rate(train_config), weight_decay=train_config.weight_decay),
  )


def make_model(config) -> UNet:
  return UNet(UNetConfig.from_config(config))


def init_params(config, model: UNet):
  """Fresh parameters from `config.seed`."""
  size, channels = config.data.image_size, config.data.num_channels
  return model.init(
    jax.random.key(config.seed),
    jnp.zeros((1, size, size, channels)),
    jnp.zeros((1,)),
    jnp.zeros((1,), jnp.int32),
  )["params"]


def init_state(config, model: UNet, optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh train state; the EMA starts as a copy of the parameters. Trace it under jit: eager is slow."""
  params = init_params(config, model)
  return TrainState(jnp.zeros((), jnp.int32), params, params, optimizer.init(params))


def jit_init_state(config, model: UNet, optimizer: optax.GradientTransformation, sharding) -> TrainState:
  """`init_state` compiled at XLA optimisation level 0: it runs once, and on CPU compiles ~5x faster so."""
  init = jax.jit(
    functools.partial(init_state, config, model, optimizer),
    out_shardings=sharding,
    compiler_options={"xla_backend_optimization_level": 0},
  )
  return init()


def abstract_state(config, model: UNet, optimizer: optax.GradientTransformation, sharding) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without allocating it (for restores)."""
  shapes = jax.eval_shape(lambda: init_state(config, model, optimizer))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
