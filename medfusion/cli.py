"""What every entry point shares: the --config flag, --help, logging, runtime settings, and one-line errors."""

import importlib.util
import json
import logging
import os
import re
import signal
import sys

# TensorFlow (imported where tfds data is read) otherwise prints its oneDNN notice, and absl's "before
# absl::InitializeLog()" warning with it, once per TensorFlow library it loads: both must be set before that import.
# Turning TF's oneDNN custom ops off leaves the data unchanged (TF only decodes and resizes here).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags  # noqa: E402 - after the environment above
from ml_collections import config_flags  # noqa: E402

from medfusion import errors  # noqa: E402

USER_ERRORS = (errors.UserError, OSError, FloatingPointError)


_STORED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stored_config.py")
_config_from_workdir = False  # set by define_model_flags: no --config means the model's own config.json


def define_config_flag(help_text: str) -> None:
  """--config=configs/X.py[:arg] with --config.field=value overrides; a misspelt field is an error."""
  config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def define_model_flags(split: bool = True) -> None:
  """The flags of commands that use a trained diffusion model: --config (optional: by default the model's own
  config.json, so overrides it was trained with carry over), --workdir, --output and, with `split`, --split and
  --max_examples."""
  global _config_from_workdir
  _config_from_workdir = True
  define_config_flag("Config file; default: the model's own WORKDIR/config.json. --config.x=v overrides a field.")
  flags.DEFINE_string("workdir", None, "Training workdir (its best checkpoint is used) or an exported model folder.")
  flags.DEFINE_string("output", None, "Output folder.")
  if split:
    flags.DEFINE_string("split", "val", "Split to use (train, val, test).")
    flags.DEFINE_integer("max_examples", 0, "Only the first N images of the split (0: all).", lower_bound=0)
  flags.mark_flags_as_required(["workdir", "output"])


def interrupts_end_start_up() -> None:
  """SIGTERM or Ctrl-C before a command installs its own handlers (the trainer's save-and-exit) ends the process at
  once with one line: nothing has been computed that could be saved. Call first thing in an entry point."""

  def handle(signum, frame):
    name = signal.Signals(signum).name
    print(f"error: interrupted: {name} during start-up; nothing to save yet", file=sys.stderr, flush=True)
    os._exit(130)

  for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, handle)


def setup(config) -> None:
  """Logging to stderr and process-wide XLA settings (YNNPACK, the compilation cache); call before the first JAX
  operation."""
  from medfusion import runtime

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):  # library chatter, incl. tfds and orbax via absl
    logging.getLogger(noisy).setLevel(logging.ERROR)
  runtime.configure_cpu(config.cpu_ynnpack)
  runtime.configure_compilation_cache(config.compilation_cache)


def start(argv, distributed: bool = False):
  """The common start of a command: no stray arguments, logging and XLA settings, the config checked before any
  heavy work, `jax.distributed` where asked or where the environment starts several processes. Returns the config."""
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = flags.FLAGS.config
  setup(config)
  _classes_from_names(config)
  from medfusion import configcheck, runtime

  configcheck.check(config)
  if _config_from_workdir and not os.path.isdir(flags.FLAGS.workdir):  # also where --config was given
    raise errors.UserError(f"--workdir={flags.FLAGS.workdir}: no such folder (a training workdir or an exported model)")
  if "output" in flags.FLAGS and flags.FLAGS.output:
    check_output_folder(flags.FLAGS.output)
  runtime.maybe_initialize_distributed(distributed)
  return config


def check_output_folder(path: str) -> None:
  """Raises UserError unless `path` is a folder this process can write into, or can be created: checked before
  any model is loaded, by writing (and removing) a probe file in it or in its nearest existing parent."""
  folder = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise errors.UserError(f"--output={path} is a file, not a folder")
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise errors.UserError(f"--output={path}: {existing} is a file, so the folder cannot be created")
  probe = os.path.join(existing, f".medfusion-write-probe-{os.getpid()}")
  try:
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    what = "is not writable" if existing == folder else f"cannot be created: {existing} is not writable"
    raise errors.UserError(f"--output={path} {what} ({e.strerror})") from None


def _classes_from_names(config) -> None:
  """`--config.data.class_names=a,b,c` (one comma-separated string) is the tuple ('a', 'b', 'c'), and
  data.num_classes follows the names unless it is given on the command line too."""
  data = config.get("data")
  if data is None:
    return
  names = tuple(n.strip() for name in data.class_names for n in str(name).split(",") if n.strip())
  if names != tuple(data.class_names):
    data.class_names = names
  if _value(sys.argv, "config.data.num_classes") is None:
    data.num_classes = len(data.class_names)


def fail(message: str, status: int = 2) -> None:
  """Prints `error: message` as one line on stderr and exits with `status`."""
  print("error: " + re.sub(r"\s+", " ", message).strip(), file=sys.stderr)
  sys.exit(status)


def _value(argv, name: str) -> str | None:
  """The value of --name=value or --name value in argv (the last one wins), else None."""
  found = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      found = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      found = argv[i + 1]
  return found


def _with_stored_config(argv):
  """argv with --config=medfusion/stored_config.py:WORKDIR added where a model command got no --config."""
  if not _config_from_workdir or _value(argv, "config") is not None:
    return argv
  workdir = _value(argv, "workdir")
  if workdir is None:
    fail("--workdir is required (the model's folder; its config.json is used unless --config is given)")
  config_json = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    fail(f"--workdir={workdir}: no such folder (a training workdir or an exported model)")
  if not os.path.isfile(config_json):
    fail(f"--workdir={workdir} has no config.json: not a training workdir or an exported model folder")
  try:
    with open(config_json) as f:
      json.load(f)
  except json.JSONDecodeError as e:
    fail(f"{config_json} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}")
  except OSError as e:
    fail(f"{config_json}: cannot read it ({e.strerror})")
  return [argv[0], f"--config={_STORED_CONFIG}:{workdir}", *argv[1:]]


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


def _parse_flags(argv):
  """absl flag parsing where a bad flag, config file or `--config.x=v` override is a one-line error."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    try:
      print_help([a for a in argv if a not in HELP_FLAGS])
    except BrokenPipeError:  # `--help | head`
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  argv = _with_stored_config(argv)
  config_file = (_value(argv, "config") or "").partition(":")[0]
  if config_file and not os.path.isfile(config_file):
    fail(f"--config: no such config file: {config_file}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # an exception inside a config file's get_config: keep its last line
      message = f"{message.split(':', 1)[0]}: {message.strip().splitlines()[-1]}"
    fail(message)
  except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config"))
    message = str(e)
    while len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":  # KeyError's quoted repr
      message = message[1:-1]
    message = message.replace("\\'", "'").replace("\\n", " ")
    fail(f"bad config override ({overrides}): {message}")


# --- --help ----------------------------------------------------------------------------------------------------------

_FIELD_LINE = re.compile(r"^\s*config\.([\w.]+)\s*=.*?#\s*(.+)$")


def _field_docs(paths) -> dict[str, str]:
  """'data.fit' -> its comment, from `config.data.fit = ...  # comment` lines of the config files."""
  docs = {}
  for path in paths:
    try:
      with open(path) as f:
        for line in f:
          match = _FIELD_LINE.match(line)
          if match:
            docs.setdefault(match.group(1), match.group(2).strip())
    except OSError:
      continue
  return docs


def _flatten(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def print_help(argv) -> None:
  """The command's docstring (what it does, an example), its flags, and with --config the config's fields with
  their values and meanings."""
  main = sys.modules["__main__"]
  print((main.__doc__ or "").strip() + "\n\nflags:")
  by_module = flags.FLAGS.flags_by_module_dict()
  own = {f.name: f for m in (__name__, sys.argv[0]) for f in by_module.get(m, [])}
  for flag in [flags.FLAGS["config"], *(f for name, f in own.items() if name != "config")]:
    default = "" if flag.default is None else f" (default: {flag.default})"
    print(f"  --{flag.name}: {flag.help}{default}")
  path = _value(argv, "config") or (f"{_STORED_CONFIG}:{_value(argv, 'workdir')}" if _value(argv, "workdir") else "")
  if not path:
    print("\nGive --config=configs/X.py (or, for model commands, --workdir) with --help to list its fields.")
    return
  file, _, arg = path.partition(":")
  try:
    spec = importlib.util.spec_from_file_location("help_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - help must not crash on a bad config
    print(f"\n(cannot load {path}: {e})")
    return
  default_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")
  docs = _field_docs([file, default_py])
  print(f"\nconfig fields of {path} (override with --config.FIELD=VALUE):")
  for name, value in _flatten(config):
    note = f"  # {docs[name]}" if name in docs else ""
    print(f"  {name} = {value!r}{note}")


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
