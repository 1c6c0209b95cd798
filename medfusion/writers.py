"""Writing files: the one atomic writer, and a run's metrics (a JSON-lines file and TensorBoard event files in
the workdir, process 0 only)."""

import io
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import BinaryIO

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
  write_atomically(path, lambda file: file.write("".join(kept).encode()))


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
  """Calls `write(file)` on a temporary file in the folder of `path`, then fsync and os.replace: readers see the
  old file or the whole new one, never part of it, even after a crash. Every file medfusion writes goes through it."""
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
  try:
    with open(temporary, "xb") as file:
      write(file)
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_text_atomic(path: str, text: str) -> None:
  """`text` (UTF-8) at `path`, written atomically."""
  write_atomically(path, lambda file: file.write(text.encode()))


def write_json_atomic(path: str, obj) -> None:
  """Indented JSON with sorted keys at `path`, written atomically."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz_atomic(path: str, **arrays) -> None:
  """np.savez's archive at `path`, written atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomically(path, lambda file: file.write(buffer.getvalue()))
