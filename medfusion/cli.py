"""What every entry point shares: logging, runtime settings, and one-line errors for user mistakes."""

import logging
import re
import sys

from absl import app, flags

from medfusion import errors, platform

USER_ERRORS = (errors.UserError, OSError, FloatingPointError)


def setup(config) -> None:
  """Logging to stderr and process-wide XLA settings; call before the first JAX operation."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):  # library chatter, incl. tfds and orbax via absl
    logging.getLogger(noisy).setLevel(logging.ERROR)
  platform.configure_cpu(config.cpu_ynnpack)


def fail(message: str) -> None:
  """Prints `error: message` as one line on stderr and exits with status 2."""
  print("error: " + re.sub(r"\s+", " ", message).strip(), file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl flag parsing where a bad flag, config file or `--config.x=v` override is a one-line error."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # an exception inside a config file's get_config: keep its last line
      message = f"{message.split(':', 1)[0]}: {message.strip().splitlines()[-1]}"
    fail(message)
  except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config"))
    fail(f"bad config ({overrides}): {str(e).replace(chr(92) + 'n', ' ').strip(chr(39))}")


def run(main) -> None:
  """absl's app.run, with user errors (bad flags, config, data, checkpoint) reported in one line, status 2."""

  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:  # config_flags raises a config file's load error (OSError) at first access
      fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
