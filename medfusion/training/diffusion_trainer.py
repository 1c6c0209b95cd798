"""The diffusion trainer: `train_and_evaluate(config, workdir)` trains the class-conditional denoiser."""

import jax
import jax.numpy as jnp
import optax

from medfusion import runtime, sharding
from medfusion.diffusion import losses, schedules
from medfusion.training import loop, optim
from medfusion.training import state as state_lib


def make_train_step(config, model, optimizer, mesh):
  """The jitted, data-parallel train step: (state, batch) -> (state, metrics)."""
  schedule = schedules.Schedule.from_config(config.diffusion, config.data.image_size)
  spec = losses.LossSpec.from_config(config)
  base_key = jax.random.key(config.seed)
  null_class = config.data.num_classes
  lr_schedule = optim.learning_rate(config.train)

  def train_step(state, batch):
    step_key = jax.random.fold_in(base_key, state.step)
    loss_key, dropout_key = jax.random.split(step_key)
    class_key = jax.random.fold_in(step_key, 2)  # a key of its own, so the denoising draws stay as they were

    def loss_fn(params):
      def apply_fn(z, logsnr, labels):
        return model.apply({"params": params}, z, logsnr, labels, train=True, rngs={"dropout": dropout_key})

      image, label = batch["image"], batch["label"]
      loss, _ = losses.denoising_loss(apply_fn, image, label, loss_key, schedule, spec, null_class, train=True)
      if spec.class_weight == 0.0:
        return loss, {"loss": loss}
      ce = jax.lax.cond(
        state.step % spec.class_every == 0,
        lambda: losses.class_loss(apply_fn, image, label, class_key, schedule, spec, null_class),
        lambda: jnp.zeros((), jnp.float32),
      )
      return loss + spec.class_weight * ce, {"loss": loss, "class_loss": ce}

    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with a warm-up so early checkpoints are not dominated by the random initialisation.
    decay = jnp.minimum(config.train.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    metrics = {**parts, "grad_norm": optax.tree.norm(grads), "learning_rate": lr_schedule(state.step)}
    return new_state, metrics

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)


def make_parts(config, mesh) -> loop.Parts:
  model = state_lib.make_model(config)
  optimizer = state_lib.make_optimizer(config.train)
  rep = sharding.replicated(mesh)
  return loop.Parts(
    abstract_state=state_lib.abstract_state(config, model, optimizer, rep),
    init_state=lambda: runtime.run_once(lambda: state_lib.init_state(config, model, optimizer), rep),
    train_step=make_train_step(config, model, optimizer, mesh),
    variables=lambda state: state.ema_params,
    predict_fn=model.apply,
  )


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final TrainState."""
  return loop.train_and_evaluate(config, workdir, make_parts)
