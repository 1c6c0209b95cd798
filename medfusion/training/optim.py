"""The learning-rate schedule both trainers use (each builds its own optimizer on it)."""

import optax


def learning_rate(train_config) -> optax.Schedule:
  """Linear warmup, then cosine decay to zero at the last step."""
  return optax.warmup_cosine_decay_schedule(
    0.0,
    train_config.learning_rate,
    train_config.warmup_steps,
    max(train_config.steps, train_config.warmup_steps + 1),
  )
