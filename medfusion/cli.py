"""What every entry point shares: logging, runtime settings, and one-line errors for user mistakes."""

import logging
import sys

from absl import app

from medfusion import errors, platform

USER_ERRORS = (errors.UserError, FileNotFoundError, FloatingPointError)


def setup(config) -> None:
  """Logging to stderr and process-wide XLA settings; call before the first JAX operation."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):  # library chatter, incl. tfds and orbax via absl
    logging.getLogger(noisy).setLevel(logging.ERROR)
  platform.configure_cpu(config.cpu_ynnpack)


def run(main) -> None:
  """absl's app.run, with user errors (bad config, data, checkpoint) reported in one line, exit status 2."""

  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
