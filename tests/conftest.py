"""Test setup: repository root on sys.path (for `configs`), a persistent XLA compilation cache shared with the
subprocesses the tests start (identical programs compile once per suite), quiet TensorFlow."""

import contextlib
import fcntl
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# The same XLA:CPU settings as the command-line tools (which apply config.cpu_ynnpack), so that results computed
# in the test process and in the subprocesses it starts are bit-identical. Set before JAX starts its backend.
from configs import default  # noqa: E402
from medfusion import runtime  # noqa: E402

runtime.configure_cpu(default.get_config().cpu_ynnpack)

# The lesion_model fixture's steps and its overrides of configs/synthetic_lesions.py:smoke that change the network,
# as command-line flags (a command that loads its checkpoints with --config=configs/synthetic_lesions.py:smoke
# passes them).
LESION_STEPS = 300
LESION_MODEL_FLAGS = ("--config.model.attention_resolutions=()", "--config.model.channels=8")


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One tfds data dir for the whole session, so each dataset is built once."""
  return str(tmp_path_factory.mktemp("tfds"))


def _env(env_extra=None) -> dict:
  return {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}


def run_python(args, env_extra=None, timeout=600, check=True):
  """Runs `python args...` from the repository root; returns the CompletedProcess."""
  proc = subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=_env(env_extra), capture_output=True, text=True, timeout=timeout, check=False
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
  return proc


class StartedPythons:
  """`python args...` from the repository root for each args of `args_list`, started at once (each pays Python, JAX
  and TensorFlow start-up, mostly on one core, so they overlap each other and whatever the test does meanwhile);
  `results()` waits for them. As a context manager, it kills those still running on exit."""

  def __init__(self, args_list, env_extra=None):
    self._folder = tempfile.TemporaryDirectory()
    self._started = []
    for i, args in enumerate(args_list):
      out = open(os.path.join(self._folder.name, f"{i}.out"), "w+")
      err = open(os.path.join(self._folder.name, f"{i}.err"), "w+")
      proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(env_extra), stdout=out, stderr=err, text=True)
      self._started.append((args, proc, out, err))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()

  def results(self, timeout=600, check=True) -> list:
    """The CompletedProcess of each, in order; with `check`, an AssertionError for the first that failed."""
    results = []
    try:
      for args, proc, out, err in self._started:
        proc.wait(timeout=timeout)
        out.seek(0)
        err.seek(0)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read()))
    finally:
      self.stop()
    for result in results:
      if check and result.returncode != 0:
        raise AssertionError(f"{result.args} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return results

  def stop(self) -> None:
    """Kills those still running and removes their output files."""
    for _, proc, out, err in self._started:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      out.close()
      err.close()
    self._folder.cleanup()


def run_pythons(args_list, env_extra=None, timeout=600, check=True) -> list:
  """`run_python` of each args of `args_list`, all at once; their CompletedProcesses in order."""
  return StartedPythons(args_list, env_extra).results(timeout, check)


def run_folder(tmp_path_factory) -> pathlib.Path:
  """This test run's temporary folder, shared by its pytest-xdist workers (each has its own below it)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def locked(path):
  """An exclusive lock on the file `path` (the workers of one run take turns)."""
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def lesion_model(tmp_path_factory, tfds_dir):
  """(config, workdir) of the smoke UNet at 8 channels (without attention) trained for LESION_STEPS steps on
  synthetic_lesions:smoke; trained once per run, by the first worker that asks (its data folder is used by all)."""
  from medfusion.training import diffusion_trainer

  shared = run_folder(tmp_path_factory)
  workdir, trained_with = shared / "lesion_model", shared / "lesion_model.json"
  with locked(shared / "lesion_model.lock"):
    if trained_with.exists():
      tfds_dir = json.loads(trained_with.read_text())["tfds_data_dir"]
    config = lesion_config(tfds_dir)
    if not trained_with.exists():
      diffusion_trainer.train_and_evaluate(config, str(workdir))
      trained_with.write_text(json.dumps({"tfds_data_dir": tfds_dir}))
  return config, str(workdir)


def lesion_config(tfds_dir: str):
  """The lesion_model fixture's config."""
  from configs import synthetic_lesions

  config = synthetic_lesions.get_config("smoke")
  config.data.tfds_data_dir = tfds_dir
  config.model.attention_resolutions = ()  # compiles faster; lesions are local, no attention needed
  config.model.channels = 8  # half the smoke width: steps twice as fast, and it learns the lesions as well
  config.train.steps = LESION_STEPS
  config.train.learning_rate = 5e-3
  config.train.progress_bar = False
  config.evals.loss.every = LESION_STEPS
  config.evals.classify.every = LESION_STEPS
  config.train.checkpoint_every = LESION_STEPS
  return config


@pytest.fixture(scope="session")
def tiny_arrays(tmp_path_factory, tfds_dir):
  """A folder with the train and val splits of train_losses_script.tiny_config's data as arrays (medfusion.prepare's
  layout, for config.data.source='arrays'): processes that read them import no TensorFlow."""
  import numpy as np
  import train_losses_script

  from medfusion.data import pipeline

  folder = tmp_path_factory.mktemp("tiny_arrays")
  data = train_losses_script.tiny_config(tfds_dir).data
  for name in (data.train_split, data.eval_split):
    split = pipeline.load_split(data, name)
    np.savez(folder / f"{name}.npz", images=split.images, labels=split.labels)
  return str(folder)


@pytest.fixture(scope="session")
def lesion_arrays(lesion_model, tmp_path_factory):
  """A folder with the val split of the lesion_model fixture's data as arrays (config.data.source='arrays'): the
  commands that read it import no TensorFlow."""
  import numpy as np

  from medfusion.data import pipeline

  folder = tmp_path_factory.mktemp("lesion_arrays")
  val = pipeline.load_split(lesion_model[0].data, "val")
  np.savez(folder / "val.npz", images=val.images, labels=val.labels)
  return str(folder)
