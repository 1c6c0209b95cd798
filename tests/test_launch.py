"""The launch scripts parse, and their dry runs print the train command they would run, touching nothing: every
program a real run calls (gcloud, srun, python, git, tar, ...) is replaced by a stub that would leave a mark."""

import ast
import glob
import importlib
import os
import shutil
import subprocess

import pytest
from conftest import ROOT

from medfusion import configcheck

LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith((".sh", ".sbatch")))
BASH = shutil.which("bash")
CONFIG = "configs/pneumoniamnist.py"
OVERRIDE = "--config.train.steps=5"
STUBBED = ("gcloud", "srun", "sbatch", "python", "python3", "git", "tar", "bash", "env", "nvidia-smi")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
  proc = subprocess.run([BASH, "-n", os.path.join(LAUNCH, script)], capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr


@pytest.fixture
def sandbox(tmp_path):
  """(run, workdir, marks): `run(script, *args)` runs a launch script from the repository root with every program a
  real run would call stubbed out; `marks` is the file a stub writes to when called."""
  stubs, marks, tmp = tmp_path / "stubs", tmp_path / "called", tmp_path / "tmp"
  stubs.mkdir()
  tmp.mkdir()
  for name in STUBBED:
    (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {marks}\n')
    (stubs / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PYTHON", "GPUS_PER_NODE", "ACCELERATOR"))}
  env.update(PATH=f"{stubs}:{os.environ['PATH']}", TMPDIR=str(tmp), GPUS_PER_NODE="4")

  def run(script, *args):
    return subprocess.run(
      [BASH, os.path.join(LAUNCH, script), *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )

  yield run, str(tmp_path / "shared" / "run"), marks
  assert os.listdir(tmp) == []


def assert_train_command(line, workdir, distributed, python="python"):
  assert f"{python} -m medfusion.train" in line
  assert f"--config={CONFIG}" in line and f"--workdir={workdir}" in line and OVERRIDE in line
  assert ("--distributed" in line) == distributed


def assert_touched_nothing(workdir, marks):
  assert not os.path.exists(workdir) and not os.path.exists(os.path.dirname(workdir))
  assert not marks.exists(), marks.read_text()


def test_local_dry_run_prints_one_process_on_all_gpus(sandbox):
  run, workdir, marks = sandbox
  proc = run("local_multi_gpu.sh", CONFIG, workdir, OVERRIDE, "--dry-run")  # --dry-run may come anywhere
  assert proc.returncode == 0, proc.stderr
  (line,) = proc.stdout.splitlines()
  assert line.startswith("env XLA_PYTHON_CLIENT_PREALLOCATE=false ")
  assert_train_command(line, workdir, distributed=False)
  assert_touched_nothing(workdir, marks)


def test_slurm_dry_run_prints_srun_with_its_environment(sandbox):
  run, workdir, marks = sandbox
  proc = run("slurm.sbatch", "--dry-run", CONFIG, workdir, OVERRIDE)
  assert proc.returncode == 0, proc.stderr
  (line,) = proc.stdout.splitlines()
  assert line.startswith(
    "srun --kill-on-bad-exit=1 env JAX_LOCAL_DEVICE_IDS=0,1,2,3 XLA_PYTHON_CLIENT_PREALLOCATE=false "
  )
  assert_train_command(line, workdir, distributed=True)
  assert_touched_nothing(workdir, marks)


def test_tpu_dry_run_prints_create_install_and_train_on_every_worker(sandbox):
  run, workdir, marks = sandbox
  proc = run("tpu_pod.sh", "--dry-run", "my-tpu", "us-central2-b", CONFIG, workdir, OVERRIDE)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  gcloud = "gcloud compute tpus tpu-vm"
  assert lines[0] == f"{gcloud} describe my-tpu --zone=us-central2-b '--format=value(state)'"
  assert lines[2].startswith(f"{gcloud} create my-tpu --zone=us-central2-b --accelerator-type=v4-32 ")
  assert lines[3].startswith("bash -c ") and "medfusion-my-tpu.tar.gz" in lines[3]
  assert lines[4].startswith(f"{gcloud} scp --zone=us-central2-b --worker=all ")
  install, train = lines[5:]
  assert install.startswith(f"{gcloud} ssh my-tpu --zone=us-central2-b --worker=all ") and "pip install" in install
  assert train.startswith(f"{gcloud} ssh my-tpu --zone=us-central2-b --worker=all ")
  assert_train_command(train, workdir, distributed=True, python="python3")
  assert_touched_nothing(workdir, marks)


@pytest.mark.parametrize("workdir", ["gs://bucket/run", "runs/relative"])
def test_tpu_workdir_must_be_a_mounted_absolute_path(sandbox, workdir):
  run, _, marks = sandbox
  proc = run("tpu_pod.sh", "--dry-run", "my-tpu", "us-central2-b", CONFIG, workdir)
  assert proc.returncode == 2 and "absolute path" in proc.stderr
  assert not marks.exists()


@pytest.mark.parametrize("script", ["local_multi_gpu.sh", "slurm.sbatch", "tpu_pod.sh"])
def test_missing_arguments_print_the_usage(sandbox, script):
  run, _, marks = sandbox
  proc = run(script, "--dry-run", CONFIG)
  assert proc.returncode != 0 and "usage:" in proc.stderr
  assert not marks.exists()


VARIANT_FILES = sorted(glob.glob(os.path.join(LAUNCH, "variants", "*.txt")))


def _variants(path):
  """(name, config file, overrides) of each variant line of a gpu_variants.sh file."""
  with open(path) as f:
    lines = [line.split() for line in f if line.strip() and not line.startswith("#")]
  return [(words[0], words[1], words[2:]) for words in lines]


@pytest.mark.parametrize("path", VARIANT_FILES, ids=os.path.basename)
def test_every_variant_names_a_config_that_takes_its_overrides(path):
  """A typo in a prepared GPU call fails here, on the CPU, rather than minutes into a lease."""
  variants = _variants(path)
  assert variants and len({name for name, _, _ in variants}) == len(variants)
  for name, config_file, overrides in variants:
    module, _, arg = config_file.removesuffix(".py").partition(":")
    config = importlib.import_module(module.replace("/", ".")).get_config(arg.removesuffix(".py"))
    for override in overrides:
      assert override.startswith("--config.") and "=" in override, (name, override)
      field, value = override.removeprefix("--config.").split("=", 1)
      parent, _, key = field.rpartition(".")
      node = config
      for part in filter(None, parent.split(".")):
        node = node[part]
      assert key in node, (name, override)
      old = node[key]
      if isinstance(old, tuple | bool):
        new = ast.literal_eval(value.replace("true", "True").replace("false", "False"))
      else:
        new = type(old)(float(value) if isinstance(old, float | int) else value)
        assert not isinstance(old, int) or float(value) == new, (name, override)
      node[key] = new
    configcheck.check(config)
