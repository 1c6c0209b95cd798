"""Metric output of a run: a JSON-lines file and TensorBoard event files in the workdir (process 0 only)."""

import json
import os
import time

import jax
import numpy as np


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tensorboard`.

  A run resumed at `resume_step` first drops the lines a killed run logged after that step, so every step
  appears once in metrics.jsonl.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_lines_after(path, resume_step)
      self._tb = SummaryWriter(
        os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1 if resume_step else None
      )
      self._jsonl = open(path, "a")

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _drop_lines_after(path: str, step: int) -> None:
  """Keeps the complete lines of metrics.jsonl with step <= `step` (rewritten atomically)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError):  # a line torn by a kill
        continue
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to a temporary file beside `path`, then renames it: readers never see half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def write_npz_atomic(path: str, **arrays) -> None:
  """np.savez to a temporary file beside `path`, then a rename: readers never see half an archive."""
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
