"""Two processes on CPU, joined by jax.distributed over 127.0.0.1, train and score like one process: the real
`train_and_evaluate` and `score_split` (tests/multiprocess_script.py) into one shared workdir, compared with a
single-process run on the same global batches; and how runtime.maybe_initialize_distributed reads the environment."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import multiprocess_script
import numpy as np
import pytest
from conftest import ROOT, run_python

from medfusion import checkpoint, runtime, sharding
from medfusion.training import state as state_lib

TIMEOUT_S = 300  # both processes together; a normal run takes about a minute on 2 cores


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_processes(args_of_process, tmp_path) -> list:
  """`python args` for each args of `args_of_process`, joined by jax.distributed, each its own process group, output
  in tmp_path/process<i>.{out,err}."""
  address = f"127.0.0.1:{free_port()}"
  procs = []
  for i, args in enumerate(args_of_process):
    env = {
      **os.environ,
      "PYTHONPATH": ROOT,
      "JAX_PLATFORMS": "cpu",
      "JAX_COORDINATOR_ADDRESS": address,
      "JAX_COORDINATOR_BIND_ADDRESS": address,  # the coordinator listens on loopback only
      "JAX_NUM_PROCESSES": str(len(args_of_process)),
      "JAX_PROCESS_ID": str(i),
    }
    with open(tmp_path / f"process{i}.out", "w") as out, open(tmp_path / f"process{i}.err", "w") as err:
      procs.append(
        subprocess.Popen(
          [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True, text=True
        )
      )
  return procs


def stop(procs) -> None:
  """Kills the process groups of `procs` still running."""
  for proc in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def wait_all(procs, tmp_path, timeout: float) -> list[dict]:
  """The JSON each process printed last; the first failure or the timeout kills them all and fails the test with
  the processes' last words."""
  deadline = time.monotonic() + timeout
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = next((i for i, code in enumerate(codes) if code), None)
      if failed is not None or None not in codes or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    stop(procs)
  if failed is not None or None in codes:
    why = f"process {failed} exited {codes[failed]}" if failed is not None else f"timed out after {timeout} s"
    tails = [f"--- process {i}:\n{(tmp_path / f'process{i}.err').read_text()[-3000:]}" for i in range(len(procs))]
    pytest.fail("\n".join([why, *tails]))
  return [json.loads((tmp_path / f"process{i}.out").read_text().splitlines()[-1]) for i in range(len(procs))]


@pytest.fixture(scope="module")
def prepared(tiny_arrays):
  """The tiny config's splits as arrays (medfusion.prepare's layout): the processes need no TensorFlow."""
  return tiny_arrays


def read_metrics(workdir) -> dict:
  """{(step, metric): value} of metrics.jsonl, timings left out."""
  values = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      for name, value in row.items():
        if name not in ("step", "time", "steps_per_s", "images_per_s"):
          values[row["step"], name] = value
  return values


def read_scores(output) -> list[dict]:
  with open(os.path.join(output, "scores.csv")) as f:
    return list(csv.DictReader(f))


def restore_latest(config, workdir):
  model, optimizer = state_lib.make_model(config), state_lib.make_optimizer(config.train)
  abstract = state_lib.abstract_state(config, model, optimizer, sharding.replicated(sharding.make_mesh()))
  ckpts = checkpoint.Checkpoints(workdir)
  try:
    return ckpts.restore_latest(abstract)
  finally:
    ckpts.close()


def test_two_processes_train_and_score_like_one(prepared, tmp_path):
  shared, output = tmp_path / "shared", tmp_path / "scores"
  args = ["tests/multiprocess_script.py", prepared, str(shared), str(output)]
  # Process 1's clock asks for a checkpoint after every step, process 0's never: they must agree to save.
  procs = start_processes([args, [*args, "1e-9"]], tmp_path)
  try:  # the single-process reference runs here meanwhile
    one = multiprocess_script.run(prepared, str(tmp_path / "one"), str(tmp_path / "one_scores"))
  except BaseException:
    stop(procs)
    raise
  results = wait_all(procs, tmp_path, TIMEOUT_S)

  steps = multiprocess_script.STEPS
  assert (one["distributed"], one["processes"], one["devices"], one["step"]) == (False, 1, 1, steps)
  for i, result in enumerate(results):
    assert (result["distributed"], result["process"], result["processes"], result["step"]) == (True, i, 2, steps)
    assert result["devices"] == 2  # one CPU device per process, one mesh over both
  # process_allgather hands every process the same errors, so the same scores.
  assert results[0]["scores"] == results[1]["scores"]

  # The same global batches and draws: the same losses and validation metrics as one process, to rounding: a
  # gradient summed over two devices adds in another order than over one. The temperature, fitted to nearly
  # separable errors, amplifies that rounding; so do rank and threshold metrics of this 3-step model, whose class
  # errors are nearly tied on some of the 16 images (one swapped pair moves an AUC by ~0.02): up to two may flip.
  ours, theirs = read_metrics(shared), read_metrics(tmp_path / "one")
  assert sorted(ours) == sorted(theirs) and (steps, "val/loss") in ours
  for key, value in theirs.items():
    discrete = any(name in key[1] for name in ("accuracy", "auc", "f1"))
    rtol = 1e-2 if key[1] == "val/temperature" else 1e-4
    np.testing.assert_allclose(ours[key], value, rtol=rtol, atol=0.05 if discrete else 1e-6, err_msg=str(key))

  # Scores equal to one process's; the partial files (process 0's alone) are gone.
  assert {"metrics.json", "scores.csv"} <= set(os.listdir(output))
  assert not [name for name in os.listdir(output) if name.startswith("scores.partial")]
  ours, theirs = read_scores(output), read_scores(tmp_path / "one_scores")
  assert len(ours) == multiprocess_script.SCORED
  for a, b in zip(ours, theirs, strict=True):
    assert [a[k] for k in ("index", "label", "votes_normal", "votes_pneumonia")] == [
      b[k] for k in ("index", "label", "votes_normal", "votes_pneumonia")
    ]
    for k in ("mean_error_normal", "mean_error_pneumonia"):
      np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-5)

  # Saved at every step (process 1's clock), and the newest restores in this single process, equal to the reference
  # run's.
  assert sorted(os.listdir(shared / "checkpoints"), key=int) == [str(s) for s in range(1, steps + 1)]
  config = multiprocess_script.config(prepared)
  (state, meta), (expected, _) = restore_latest(config, shared), restore_latest(config, tmp_path / "one")
  assert int(state.step) == steps and meta["data"]["examples_seen"] == steps * config.train.batch_size
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  ("env", "expected"),
  [
    ({}, ("", 1)),
    (
      {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
      ("JAX_COORDINATOR_ADDRESS", 4),
    ),
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, ("", 1)),  # the address alone: JAX itself needs --distributed
    (
      {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "n[1-2]",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
      },
      ("SLURM", 2),
    ),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, ("", 1)),  # sbatch, no srun
    (  # an interactive step of a larger allocation
      {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "n1",
        "SLURM_NTASKS": "4",
        "SLURM_STEP_NUM_TASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
      },
      ("SLURM", 1),
    ),
    (
      {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "n1",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
      },
      ("SLURM", 1),
    ),
    (
      {"OMPI_MCA_orte_hnp_uri": "1;tcp://h:1", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "0"},
      ("Open MPI", 8),
    ),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, ("TPU pod", 4)),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, ("TPU pod", 1)),
  ],
)
def test_launcher_processes_reads_the_environment(env, expected):
  assert runtime.launcher_processes(env) == expected


@pytest.fixture
def no_launcher(monkeypatch):
  """os.environ without the variables of any launcher (as when the tests themselves run under srun)."""
  for name in list(os.environ):
    if name.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_", "OMPI_", "TPU_")):
      monkeypatch.delenv(name)


def test_a_single_process_is_left_alone(no_launcher):
  assert runtime.launcher_processes() == ("", 1)
  assert runtime.maybe_initialize_distributed(False) is False
  assert not jax.distributed.is_initialized()


def test_distributed_flag_without_a_launcher_is_a_one_line_error(no_launcher, tmp_path):
  workdir = tmp_path / "run"
  proc = run_python(
    ["-m", "medfusion.train", "--config=configs/pneumoniamnist.py:smoke", f"--workdir={workdir}", "--distributed"],
    timeout=120,
    check=False,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("error: jax.distributed.initialize(): ")
  assert not workdir.exists()
