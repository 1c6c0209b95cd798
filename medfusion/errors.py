"""The errors caused by user input (config, data, checkpoints): entry points report them in one line."""


class UserError(ValueError):
  """Bad input from the user; entry points print its message and exit with status 2."""


class ConfigError(UserError):
  """A config field with a value medfusion cannot use; the message names the field."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM stopped a command; the message says what was kept and how to continue (exit status 130)."""
