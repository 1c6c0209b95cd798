"""Test setup: repository root on sys.path (for `configs`), a persistent XLA compilation cache shared with the
subprocesses the tests start (identical programs compile once per suite), quiet TensorFlow."""

import os
import sys

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


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One tfds data dir for the whole session, so each dataset is built once."""
  return str(tmp_path_factory.mktemp("tfds"))


def run_python(args, env_extra=None, timeout=600, check=True):
  """Runs `python args...` from the repository root; returns the CompletedProcess."""
  import subprocess

  env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
  proc = subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
  return proc


@pytest.fixture(scope="session")
def lesion_model(tmp_path_factory, tfds_dir):
  """(config, workdir) of the smoke UNet (without attention) trained for 450 steps on synthetic_lesions:smoke."""
  from configs import synthetic_lesions
  from medfusion.training import diffusion

  workdir = str(tmp_path_factory.mktemp("lesions"))
  config = synthetic_lesions.get_config("smoke")
  config.data.tfds_data_dir = tfds_dir
  config.model.attention_resolutions = ()  # compiles faster; lesions are local, no attention needed
  config.train.steps = 450
  config.train.learning_rate = 2e-3
  config.train.progress_bar = False
  config.evals.loss.every = 450
  config.evals.classify.every = 450
  config.train.checkpoint_every = 450
  diffusion.train_and_evaluate(config, workdir)
  return config, workdir
