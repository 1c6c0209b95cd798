"""Failure behaviour: one-line errors for bad input, exact resume after SIGTERM/SIGKILL, scoring that loses
nothing when killed, and finite errors at the extremes of the schedule."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import fakes
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_losses_script
from conftest import LESION_MODEL_FLAGS, LESION_STEPS, ROOT, run_python, run_pythons

from medfusion import checkpoint, modeldir, sharding
from medfusion.classify import kernel
from medfusion.data import pipeline
from medfusion.diffusion import schedules
from medfusion.evaluation import split_scoring
from medfusion.training import diffusion_trainer
from medfusion.training import state as state_lib


def test_cli_rejects_bad_configs_in_one_line_naming_the_culprit(tmp_path):
  """One process per way a config reaches the command line: a missing file, an unknown field (with a suggestion),
  a value the typed specs refuse, and comma-separated names; each field's own check is tested in-process
  (test_configs.py)."""
  train = ["-m", "medfusion.train", f"--workdir={tmp_path}"]
  smoke = [*train, "--config=configs/pneumoniamnist.py:smoke"]
  nope, stepz, steps, names = run_pythons(
    [
      [*train, "--config=configs/nope.py"],
      [*smoke, "--config.train.stepz=3"],
      [*smoke, "--config.train.steps=-5"],
      [*smoke, "--config.data.class_names=a,b,c", "--config.train.steps=0"],
    ],
    check=False,
  )
  fakes.assert_one_line_error(nope, "no such config file: configs/nope.py")
  fakes.assert_one_line_error(stepz, "'stepz'", 'Did you mean "steps"')
  assert "\\" not in stepz.stderr
  fakes.assert_one_line_error(steps, "config.train.steps=-5")
  fakes.assert_one_line_error(names, "config.train.steps=0")  # three comma-separated names passed the class check
  assert not os.listdir(tmp_path)  # nothing written before the config is known to be good


def test_model_commands_check_counts_workdir_and_output_before_loading_anything(tmp_path):
  """Negative counts, a missing workdir, a broken config.json and an --output that cannot be written are each one
  line, found before any data or model is loaded."""
  model = os.path.join(ROOT, "pretrained", "pneumoniamnist")
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text('{\n  "seed": 0,\n  "data": {"npz": "x",}\n}\n')
  a_file = tmp_path / "file.txt"
  a_file.write_text("not a folder")
  score = ["-m", "medfusion.score", "--split=val"]
  cases = {
    "-5 is not a non-negative integer": [*score, f"--workdir={model}", "--max_examples=-5", f"--output={tmp_path}/o"],
    "--num=0: 0 is not a positive integer": ["-m", "medfusion.sample", f"--workdir={model}", "--num=0", "--output=o"],
    "nowhere: no such folder": [*score, f"--workdir={tmp_path}/nowhere", f"--output={tmp_path}/o"],
    "config.json is not valid JSON: line 3, column": [*score, f"--workdir={broken}", f"--output={tmp_path}/o"],
    "file.txt is a file, not a folder": [*score, f"--workdir={model}", f"--output={a_file}"],
    "file.txt is a file, so the folder cannot be created": [*score, f"--workdir={model}", f"--output={a_file}/out"],
  }
  if os.geteuid() != 0:  # root writes into read-only folders
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    cases["read_only is not writable"] = [*score, f"--workdir={model}", f"--output={read_only}"]
  for message, proc in zip(cases, run_pythons(list(cases.values()), check=False), strict=True):
    fakes.assert_one_line_error(proc, message)
    assert "Using checkpoint" not in proc.stderr


@pytest.fixture(scope="module")
def lesion_arrays(lesion_model, tmp_path_factory):
  """A folder with the val split of the lesion_model fixture's data as arrays (config.data.source='arrays'): the
  commands that read it import no TensorFlow."""
  folder = tmp_path_factory.mktemp("lesion_arrays")
  val = pipeline.load_split(lesion_model[0].data, "val")
  np.savez(folder / "val.npz", images=val.images, labels=val.labels)
  return str(folder)


def test_cli_rejects_bad_data_and_checkpoints_in_one_line(tmp_path, tfds_dir, lesion_model, lesion_arrays):
  bad = tmp_path / "bad.npz"
  np.savez(bad, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.zeros((3, 1), np.uint8))
  score = ["-m", "medfusion.score", "--config=configs/synthetic_lesions.py:smoke", f"--output={tmp_path}/out"]
  arrays = ["--config.data.source=arrays", f"--config.data.folder={lesion_arrays}"]  # no TensorFlow to start
  workdir = f"--workdir={lesion_model[1]}"
  npz, no_checkpoint, shapes, draws = run_pythons(
    [
      [
        "-m",
        "medfusion.train",
        "--config=configs/pneumoniamnist.py:smoke",
        f"--workdir={tmp_path}/w",
        f"--config.data.npz={bad}",
        f"--config.data.tfds_data_dir={tfds_dir}",
      ],
      [*score, *LESION_MODEL_FLAGS, f"--workdir={tmp_path}", *arrays],
      [*score, "--config.model.attention_resolutions=()", workdir, *arrays],  # the smoke width, not the model's
      [*score, *LESION_MODEL_FLAGS, workdir, *arrays, "--config.classify.num_draws=0"],
    ],
    check=False,
  )
  fakes.assert_one_line_error(npz, "bad.npz", "train_labels")
  fakes.assert_one_line_error(no_checkpoint, "has no checkpoint")
  fakes.assert_one_line_error(shapes, "has shape", "expects")
  fakes.assert_one_line_error(draws, "classify.num_draws=0")
  assert not os.path.exists(f"{tmp_path}/out/scores.csv")


def _start(args, stderr=subprocess.PIPE):
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.Popen(
    [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
  )


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
  args = [
    "-m",
    "medfusion.train",
    "--config=configs/pneumoniamnist.py:smoke",
    f"--workdir={workdir}",
    "--config.data.source=arrays",
    f"--config.data.folder={tiny_arrays}",
    "--config.model.channels=8",  # train_losses_script.tiny_config
    "--config.model.channel_mult=(1,2)",
    "--config.model.attention_resolutions=()",
    *[f"--config.train.{k}={v}" for k, v in overrides.items()],
    "--config.evals.loss.every=10",
    "--config.evals.classify.every=10",
  ]

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


@pytest.mark.parametrize("t", [0.0, 1e-7, 1.0 - 1e-7, 1.0])
@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_errors_are_finite_at_the_extremes_of_the_schedule(t, prediction):
  schedule = schedules.Schedule("cosine", -15.0, 15.0)
  key = jax.random.key(0)
  x = jax.random.uniform(key, (2, 8, 8, 1), minval=-1, maxval=1)
  eps = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
  logsnr = schedule.logsnr(jnp.full((2,), t))
  z = schedules.diffuse(x, eps, logsnr)
  output = jax.random.normal(jax.random.fold_in(key, 2), x.shape)  # any finite network output
  for error in kernel.ERRORS:
    assert np.all(np.isfinite(kernel.pair_error(error, output, x, eps, z, logsnr, prediction))), error


def test_shipped_model_scores_alike_in_bfloat16_and_float32(tfds_dir):
  """pretrained/pneumoniamnist on the first 128 images of the bundled validation split (two classifier batches):
  bf16 and fp32 predictions agree on >= 99 % of them (all but one) for both aggregators (K = 2 draws and 128 of the
  524 images keep this test short; the shipped config uses 64 draws)."""
  from configs import pneumoniamnist
  from medfusion.classify import aggregate
  from medfusion.classify.classifier import DiffusionClassifier
  from medfusion.data import pipeline

  config = pneumoniamnist.get_config()
  config.data.tfds_data_dir = tfds_dir
  config.classify.num_draws = 2
  split = pipeline.load_split(config.data, "val")
  assert len(split.labels) == 524
  images, labels = split.images[:128].astype(np.float32) / 127.5 - 1.0, split.labels[:128]
  indices = np.arange(len(images), dtype=np.int32)
  model = modeldir.load_ema_params(config, os.path.join(ROOT, "pretrained", "pneumoniamnist"))
  params = model.params
  assert model.step == 3400
  predictions = {}
  for dtype in ("float32", "bfloat16"):
    config.classify.dtype = dtype
    tally = DiffusionClassifier(config, params).score(images, indices)
    predictions[dtype] = {
      "vote": aggregate.vote_prediction(tally.votes, tally.mean_errors),
      "mean": aggregate.mean_prediction(tally.mean_errors),
    }
  for name in ("vote", "mean"):
    fp32, bf16 = predictions["float32"][name], predictions["bfloat16"][name]
    assert np.mean(fp32 == bf16) >= 0.99, (name, np.mean(fp32 == bf16))
    assert np.mean(fp32 == labels) >= 0.85, (name, np.mean(fp32 == labels))  # the model classifies


def test_ctrl_c_during_compilation_exits_cleanly(tmp_path, tiny_arrays):
  """SIGINT while the first step compiles: the process saves after that step (or says nothing was trained yet)
  and exits without a traceback or a crash. (Its data, PneumoniaMNIST, are read as arrays: no TensorFlow to start.)"""
  workdir = tmp_path / "w"
  log = tmp_path / "stderr.txt"
  args = [
    "-m",
    "medfusion.train",
    "--config=configs/pneumoniamnist.py:smoke",
    f"--workdir={workdir}",
    "--config.data.source=arrays",
    f"--config.data.folder={tiny_arrays}",
    "--config.train.steps=500",
  ]
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


def test_help_exits_0_with_the_commands_flags_and_the_config_fields():
  train, score = run_pythons(
    [
      ["-m", "medfusion.train", "--help", "--config=configs/pneumoniamnist.py:smoke"],
      ["-m", "medfusion.score", "--help"],
    ],
    check=False,
  )
  assert train.returncode == 0, train.stderr[-2000:]
  assert "python -m medfusion.train" in train.stdout and "--workdir" in train.stdout
  assert "classify.num_draws = 8  # K (timestep, noise) draws per image" in train.stdout
  assert score.returncode == 0 and "--max_examples" in score.stdout
