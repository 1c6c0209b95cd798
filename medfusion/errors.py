"""The base of every error caused by user input (config, data, checkpoints): reported in one line."""


class UserError(ValueError):
  """Bad input from the user; entry points print its message and exit with status 2."""
