"""The one exception type for bad input data, so callers can report it without a traceback."""

from medfusion.errors import UserError


class DataError(UserError):
  """Input data is missing or malformed; the message names the file, key or folder at fault."""
