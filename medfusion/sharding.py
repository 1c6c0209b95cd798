"""The device mesh and the shardings used everywhere: batches split over `data`, state replicated."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, field: str) -> None:
  """A global batch must split evenly over devices and processes."""
  devices = jax.device_count()
  if batch_size <= 0 or batch_size % devices:
    raise ValueError(f"{field}={batch_size} must be a positive multiple of the {devices} devices")


def to_global(mesh: Mesh, local_batch):
  """Assembles this process's slice of a batch (a pytree of numpy arrays) into globally sharded arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local_batch)


def shared_to_global(mesh: Mesh, batch):
  """Like `to_global`, for a batch every process holds whole (eval data): each contributes its own rows."""
  p, n = jax.process_index(), jax.process_count()
  rows = len(jax.tree.leaves(batch)[0]) // n
  return to_global(mesh, jax.tree.map(lambda a: np.asarray(a)[p * rows : (p + 1) * rows], batch))


def abstract(fn, sharding):
  """Shapes and dtypes of `fn()`'s pytree with `sharding` on every leaf, without computing it (for restores)."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), jax.eval_shape(fn))
