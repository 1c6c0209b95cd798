"""Per-draw symmetries of the square: balanced over any 8 consecutive draws, deterministic, exactly invertible."""

import jax
import jax.numpy as jnp
import numpy as np

from medfusion.classify import draws


def test_every_eight_consecutive_draws_use_all_eight_symmetries():
  key = draws.image_key(0, 5)
  s = np.asarray(draws.symmetries(key, 20))
  assert sorted(s[:8]) == list(range(8)) and sorted(s[8:16]) == list(range(8))
  np.testing.assert_array_equal(s[:12], draws.symmetries(key, 12))  # a longer budget extends, never reorders
  assert not np.array_equal(s, draws.symmetries(draws.image_key(0, 6), 20))  # another image, another order


def test_the_eight_symmetries_are_distinct_and_invertible():
  image = jnp.arange(3 * 3 * 2, dtype=jnp.float32).reshape(3, 3, 2)
  seen = set()
  for index in range(8):
    out = draws.apply_symmetry(image, index)
    seen.add(np.asarray(out).tobytes())
    np.testing.assert_array_equal(draws.apply_symmetry(out, index, inverse=True), image)
  assert len(seen) == 8
  np.testing.assert_array_equal(draws.apply_symmetry(image, 0), image)
  np.testing.assert_array_equal(draws.apply_symmetry(image, 4), image[:, ::-1])  # the flip alone
  np.testing.assert_array_equal(draws.apply_symmetry(image, 1), np.rot90(image, 1, axes=(0, 1)))
  batched = jax.vmap(draws.apply_symmetry)(jnp.stack([image] * 8), jnp.arange(8))  # traced indices, as in the kernel
  np.testing.assert_array_equal(batched[5], draws.apply_symmetry(image, 5))
