"""What every entry point shares: the --config flag, logging, runtime settings, and one-line errors."""

import logging
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from medfusion import errors, runtime

USER_ERRORS = (errors.UserError, OSError, FloatingPointError)


def define_config_flag(help_text: str) -> None:
  """--config=configs/X.py[:arg] with --config.field=value overrides; a misspelt field is an error."""
  config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def setup(config) -> None:
  """Logging to stderr and process-wide XLA settings; call before the first JAX operation."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):  # library chatter, incl. tfds and orbax via absl
    logging.getLogger(noisy).setLevel(logging.ERROR)
  runtime.configure_cpu(config.cpu_ynnpack)


def start(argv, distributed: bool = False):
  """The common start of a command: no stray arguments, logging and XLA settings, the config checked before any
  heavy work, `jax.distributed` where asked. Returns the config."""
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = flags.FLAGS.config
  setup(config)
  from medfusion import configcheck

  configcheck.check(config)
  if distributed:
    import jax

    jax.distributed.initialize()
  return config


def fail(message: str, status: int = 2) -> None:
  """Prints `error: message` as one line on stderr and exits with `status`."""
  print("error: " + re.sub(r"\s+", " ", message).strip(), file=sys.stderr)
  sys.exit(status)


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
  """absl's app.run, with user errors (bad flags, config, data, checkpoint) reported in one line, status 2, and
  interrupts in one line, status 130."""

  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:  # config_flags raises a config file's load error (OSError) at first access
      fail(str(e))
    except errors.Interrupted as e:
      fail(f"interrupted: {e}", 130)
    except KeyboardInterrupt:
      fail("interrupted", 130)

  app.run(guarded, flags_parser=_parse_flags)
