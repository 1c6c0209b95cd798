"""Interruptions: training killed three ways resumes bit-identically, scoring killed at any moment loses
nothing, Ctrl-C during compilation and SIGTERM during start-up exit cleanly."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import train_losses_script
from conftest import LESION_MODEL_FLAGS, LESION_STEPS, ROOT, run_python, run_pythons

from medfusion import checkpoint, sharding
from medfusion.evaluation import split_scoring
from medfusion.training import diffusion_trainer
from medfusion.training import state as state_lib


def _start(args, stderr=subprocess.PIPE):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.Popen(
    [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
  )


def _train_args(workdir, arrays, *overrides) -> list[str]:
  """medfusion.train's arguments for the PneumoniaMNIST smoke config on prepared arrays (no TensorFlow to start)."""
  return [
    "-m",
    "medfusion.train",
    "--config=configs/pneumoniamnist.py:smoke",
    f"--workdir={workdir}",
    "--config.data.source=arrays",
    f"--config.data.folder={arrays}",
    *overrides,
  ]


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      stderr = proc.stderr.read()[-3000:] if proc.stderr else ""
      raise AssertionError(f"process ended early ({proc.returncode}): {stderr}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(0.05)


def _last_step(workdir, since=0.0):
  """The last step in metrics.jsonl, among the lines logged at or after time `since`."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip().endswith("}")]
  return max((line["step"] for line in lines if line["time"] >= since), default=0)


def _restore(config, workdir):
  model, optimizer = state_lib.make_model(config), state_lib.make_optimizer(config.train)
  abstract = state_lib.abstract_state(config, model, optimizer, sharding.replicated(sharding.make_mesh()))
  ckpts = checkpoint.Checkpoints(workdir)
  state, _ = ckpts.restore_latest(abstract)
  ckpts.close()
  return state


def test_killed_and_resumed_training_is_bit_identical(tmp_path, tiny_arrays):
  """Killed three times (SIGKILL, possibly mid-save; SIGTERM; SIGINT); the end state equals an uninterrupted
  run's. The data are arrays (no TensorFlow to start in each process); the uninterrupted run trains here while the
  interrupted one runs."""
  # 24 steps: after the SIGINT at step 12, the run has a dozen steps (and two saves, an evaluation) left to stop in
  overrides = {"steps": 24, "checkpoint_every": 3, "log_every": 1, "progress_bar": False}
  config = train_losses_script.tiny_config("")
  config.data.update(source="arrays", folder=tiny_arrays)
  config.train.update(overrides)
  config.evals.loss.every = config.evals.classify.every = 10

  workdir = str(tmp_path / "interrupted")
  args = _train_args(
    workdir,
    tiny_arrays,
    "--config.model.channels=8",  # train_losses_script.tiny_config
    "--config.model.channel_mult=(1,2)",
    "--config.model.attention_resolutions=()",
    *[f"--config.train.{k}={v}" for k, v in overrides.items()],
    "--config.evals.loss.every=10",
    "--config.evals.classify.every=10",
  )

  def interrupt_and_resume():
    interrupts = ((4, signal.SIGKILL), (9, signal.SIGTERM), (12, signal.SIGINT))
    for i, (kill_after, sig) in enumerate(interrupts):
      # the signal goes to a process that is training: one that said where it starts (not one still starting up,
      # which ends at once) and logged the step itself (metrics.jsonl holds the killed run's lines until it truncates
      # them); a relaunch after the SIGKILL may start from scratch if the kill landed before the first save finished
      log, started = open(tmp_path / f"run{i}.err", "w+"), time.time()
      proc = _start(args, stderr=log)
      _wait_for(lambda k=kill_after, t=started: _last_step(workdir, since=t) >= k, proc)
      said = (tmp_path / f"run{i}.err").read_text()
      assert "Resumed from step" in said or (i < 2 and "Starting training from scratch" in said), said[-2000:]
      proc.send_signal(sig)
      proc.wait(timeout=120)
      log.seek(0)
      stderr = log.read()
      log.close()
      if sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C behaves like a preemption notice
        assert proc.returncode == 0, stderr[-2000:]
        assert f"{sig.name}: saved a checkpoint" in stderr and "Traceback" not in stderr, stderr[-2000:]
      else:
        assert proc.returncode == -signal.SIGKILL
    proc = _start(args)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Resumed from step" in stderr

  failures = []
  chain = threading.Thread(target=lambda: _record_failure(interrupt_and_resume, failures))
  chain.start()
  reference = str(tmp_path / "reference")
  try:
    diffusion_trainer.train_and_evaluate(config, reference)  # in the main thread: it installs signal handlers
  finally:
    chain.join()
  if failures:
    raise failures[0]

  a, b = _restore(config, reference), _restore(config, workdir)
  assert int(a.step) == int(b.step) == config.train.steps
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _record_failure(fn, failures: list) -> None:
  """Calls `fn()`, appending what it raised to `failures` (for a thread whose failure the test raises)."""
  try:
    fn()
  except BaseException as e:  # re-raised by the test, in its own thread
    failures.append(e)


def test_second_sigterm_and_one_in_start_up_exit_at_once():
  """The first SIGTERM only asks the loop to checkpoint and stop; a second one ends the process on the spot. One
  during start-up (before the loop's handlers, as medfusion.train installs them) ends it at once with one line."""
  twice = """
import os, signal, time
from medfusion.training.loop import Interrupts
interrupts = Interrupts()
os.kill(os.getpid(), signal.SIGTERM)
print("after first:", interrupts.requested, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
print("still running", flush=True)
"""
  start_up = """
import os, signal, time
from medfusion import cli
cli.interrupts_end_start_up()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
print("still running", flush=True)
"""
  twice, start_up = run_pythons([["-c", twice], ["-c", start_up]], check=False, timeout=60)
  assert twice.returncode == 128 + signal.SIGTERM, twice.stderr[-2000:]
  assert twice.stdout.strip() == "after first: True"  # never "still running"
  assert start_up.returncode == 130 and not start_up.stdout, start_up
  assert start_up.stderr.strip() == "error: interrupted: SIGTERM during start-up; nothing to save yet", start_up.stderr


def test_scoring_killed_at_random_moments_loses_nothing(tmp_path, lesion_model, lesion_arrays):
  """The killed and resumed runs read the val split as arrays (the same images; no TensorFlow to start in each)."""
  config, workdir = lesion_model
  config = config.copy_and_resolve_references()
  config.classify.batch_size = 4
  reference = str(tmp_path / "reference")
  split_scoring.score_split(config, workdir, "val", reference)

  output = str(tmp_path / "killed")
  args = [
    "-m",
    "medfusion.score",
    "--config=configs/synthetic_lesions.py:smoke",
    f"--workdir={workdir}",
    "--split=val",
    f"--output={output}",
    "--config.data.source=arrays",
    f"--config.data.folder={lesion_arrays}",
    f"--config.train.steps={LESION_STEPS}",
    *LESION_MODEL_FLAGS,
    "--config.classify.batch_size=4",
  ]
  partial = os.path.join(output, "scores.partial.csv")
  rng = np.random.default_rng(0)
  for sig in (signal.SIGKILL, signal.SIGINT):  # killed at any moment; Ctrl-C says what it kept, on its own line
    before = os.path.getsize(partial) if os.path.exists(partial) else 0
    proc = _start(args)  # signalled once it has written a block of its own
    _wait_for(lambda b=before: os.path.exists(partial) and os.path.getsize(partial) > max(b, 200), proc)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(sig)
    _, stderr = proc.communicate()
    if sig == signal.SIGINT:
      assert proc.returncode == 130, stderr[-3000:]
      last = stderr.strip().splitlines()[-1]
      assert re.fullmatch(r"error: interrupted: \d+ of 64 images are kept \(\d+ of them in this run\) in .*", last), (
        last
      )
  run_python(args)
  with open(os.path.join(reference, "scores.csv")) as f, open(os.path.join(output, "scores.csv")) as g:
    assert list(csv.reader(f)) == list(csv.reader(g))


def test_ctrl_c_during_compilation_exits_cleanly(tmp_path, tiny_arrays):
  """SIGINT while the first step compiles: the process saves after that step (or says nothing was trained yet)
  and exits without a traceback or a crash. (Its data, PneumoniaMNIST, are read as arrays: no TensorFlow to start.)"""
  workdir = tmp_path / "w"
  log = tmp_path / "stderr.txt"
  args = _train_args(workdir, tiny_arrays, "--config.train.steps=500")
  with open(log, "w") as stderr:
    proc = _start(args, stderr)
    deadline = time.time() + 300
    while "parameters;" not in log.read_text() and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
  text = log.read_text()
  assert "Traceback" not in text and "Fatal Python error" not in text, text[-3000:]
  assert proc.returncode in (0, 130), text[-3000:]
  if proc.returncode == 0:
    assert "SIGINT: saved a checkpoint at step" in text
    assert _last_step(str(workdir)) < 500
