"""Batch scoring of a split with a trained model (the diffusion classifier or a ResNet, evaluation/predictors.py):
scores.csv, metrics.json, risk_coverage.png.

Scoring runs in blocks of images sized to last about a minute (the first is one batch); each finished block's totals
are appended to `OUT/scores.partial.csv` and flushed to disk, so a run killed at any moment and started again with
the same arguments continues after the last complete block. Nothing is written before the first block is scored;
the final files are written atomically at the end, each image exactly once, and everything in them is computed from
the stored totals, so a resumed run's files equal an uninterrupted one's.
"""

import csv
import io
import json
import logging
import os
import time

import jax
import jax.experimental.multihost_utils
import numpy as np

from medfusion import metrics, modeldir, plots, runtime
from medfusion.data import pipeline
from medfusion.errors import Interrupted, UserError
from medfusion.evaluation import predictors, report, split_runner
from medfusion.writers import write_json_atomic, write_text_atomic

log = logging.getLogger("medfusion")

PARTIAL_CSV, PARTIAL_SETTINGS = "scores.partial.csv", "scores.partial.json"


class PartialScores:
  """The append-only partial CSV of an interrupted run, and the settings it was made with.

  The files are created with the first block, so a run that fails before it leaves nothing behind.
  """

  def __init__(self, output: str, class_names, fingerprint: dict, predictor):
    self.output, self.fingerprint, self.predictor = output, fingerprint, predictor
    self.header = predictor.partial_header(class_names)
    self.path = os.path.join(output, PARTIAL_CSV)
    self.settings_path = os.path.join(output, PARTIAL_SETTINGS)
    self.done: dict[int, list[str]] = {}
    if os.path.exists(self.path) and os.path.exists(self.settings_path):
      with open(self.settings_path) as f:
        if json.load(f) != fingerprint:
          raise UserError(
            f"{output} holds a partial scoring run with other settings (checkpoint, split or classify config); "
            "use another --output or delete it"
          )
      self.done = self._read_done()

  def _read_done(self) -> dict[int, list[str]]:
    """Rows already written; a torn last line (killed mid-write) is cut off."""
    with open(self.path, "rb") as f:
      data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))
    rows = list(csv.reader(io.StringIO(complete.decode())))[1:]
    return {int(r[0]): r for r in rows if len(r) == len(self.header)}

  def append(self, totals) -> None:
    """Writes a finished block's rows to disk (process 0), then counts them as done: an interrupt during the write
    leaves a torn line that the next run cuts off, and is never reported as kept."""
    rows = self.predictor.partial_rows(totals)
    if jax.process_index() == 0:  # every process holds the same totals; process 0 writes them
      if not os.path.exists(self.path):
        os.makedirs(self.output, exist_ok=True)
        write_json_atomic(self.settings_path, self.fingerprint)
        with open(self.path, "w") as f:
          f.write(",".join(self.header) + "\n")
      buffer = io.StringIO()
      csv.writer(buffer, lineterminator="\n").writerows(rows)
      with open(self.path, "a") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    for row in rows:
      self.done[int(row[0])] = [str(x) for x in row]

  def totals(self, num_classes: int):
    """The stored totals of every image done, sorted by index."""
    rows = np.array([self.done[i] for i in sorted(self.done)], dtype=object).reshape(-1, len(self.header))
    return self.predictor.from_partial_rows(rows, num_classes)

  def remove(self) -> None:
    if jax.process_index() != 0:  # the files are process 0's
      return
    for path in (self.path, self.settings_path):
      if os.path.exists(path):
        os.remove(path)


AGGREGATOR_TITLES = {"vote": "majority vote of the draws", "mean": "lowest mean error", "softmax": "softmax argmax"}
BLOCK_SECONDS = 60.0  # a scoring block (the unit a resumed run keeps) lasts about this long


class BlockSizes:
  """Sizes of successive scoring blocks: the first is one batch, so Ctrl-C after the first minute already keeps
  work; each next one is as many whole batches as the last block's pace scores in `BLOCK_SECONDS` (one to four
  batches: larger blocks repack the images adaptive stopping leaves into fuller batches). With several processes,
  process 0's choice is used by all (the kernel calls are collective)."""

  def __init__(self, batch_size: int, seconds: float = BLOCK_SECONDS):
    self.batch_size, self.seconds = batch_size, seconds
    self._started, self._size = None, batch_size

  def next(self) -> int:
    now = time.monotonic()
    if self._started is not None:
      self._size = block_size(self.batch_size, self._size / (now - self._started), self.seconds)
      if jax.process_count() > 1:
        self._size = int(jax.experimental.multihost_utils.broadcast_one_to_all(np.int32(self._size)))
    self._started = now
    return self._size


def block_size(batch_size: int, images_per_second: float, seconds: float) -> int:
  """Whole batches scored in `seconds` at `images_per_second`, between one and four batches."""
  return batch_size * int(np.clip(images_per_second * seconds // batch_size, 1, 4))


def scoring_batch_size(batch_size: int, n: int, devices: int) -> int:
  """`config.classify.batch_size`, or less where the split has fewer images: the fewest rows that hold all `n`
  images and split evenly over the devices (padding rows cost as much as images)."""
  return min(batch_size, -(-n // devices) * devices)


def _interrupted_message(done: int, done_before: int, n: int, path: str) -> str:
  """What an interrupted scoring run kept, and how to go on."""
  if done == 0:
    return "stopped before the first block of images was scored: nothing was kept; the same command starts again"
  new = f" ({done - done_before} of them in this run)" if done_before else ""
  return f"{done} of {n} images are kept{new} in {path}; run the same command again to score the other {n - done}"


def score_split(config, workdir: str, split_name: str, output: str, max_examples: int = 0) -> dict:
  """Scores `split_name` with the workdir's best checkpoint into `output`; returns metrics.json's content. Logs
  where the time went (`TIMING_LOG`)."""
  clock = Stopwatch()
  split = pipeline.load_split(config.data, split_name)
  n = len(split.labels) if max_examples <= 0 else min(max_examples, len(split.labels))
  clock.lap("data")
  model = modeldir.load(config, workdir)
  clock.lap("model")
  temperature, temperature_source = modeldir.temperature(config, workdir, model.step)
  class_names = list(config.data.class_names)
  fingerprint = {
    "workdir": os.path.abspath(workdir),
    "checkpoint_step": model.step,
    "split": split_name,
    "n": n,
    "data": config.data.to_dict() | {"class_names": class_names},
    "seed": config.seed,
  }
  batch_size = scoring_batch_size(predictors.batch_size(config), n, jax.device_count())
  predictor = predictors.make(config, model, batch_size, workdir)  # the diffusion classifier or a ResNet
  fingerprint.update(predictor.settings())
  partial = PartialScores(output, class_names, json.loads(json.dumps(fingerprint, default=list)), predictor)
  done_before = len(partial.done)
  try:
    with split_runner.progress_bar(n, f"score {split_name}", initial=done_before) as bar:
      blocks = BlockSizes(batch_size)
      for totals in split_runner.run_blocks(predictor.score, split, n, blocks.next, partial.done, bar.update):
        partial.append(totals)
  except KeyboardInterrupt:
    raise Interrupted(_interrupted_message(len(partial.done), done_before, n, partial.path)) from None
  clock.lap("network")

  totals = partial.totals(len(class_names))
  if temperature is None:
    whole = n == len(split.labels)
    temperature, temperature_source = _fit_or_fall_back(config, workdir, model.step, split_name, totals, whole)
  prior = None
  if predictor.kind == "diffusion" and config.classify.prior != "uniform":
    train_labels = (
      pipeline.load_split(config.data, config.data.train_split).labels if config.classify.prior == "train" else None
    )
    prior = report.class_prior(config.classify.prior, train_labels, len(class_names))
  columns, result = predictor.report(totals, temperature, prior)
  if n == len(split.labels):
    result["halves"] = _halves(predictor, totals, split.labels, temperature, prior)
  if predictor.kind == "diffusion":
    result["prior"] = config.classify.prior if prior is None else prior.tolist()
  result.update(
    {
      "temperature": temperature,
      "temperature_source": temperature_source,
      "split": split_name,
      "checkpoint_step": model.step,
      "checkpoint": model.which,
      "checkpoint_path": model.path,
      "workdir": os.path.abspath(workdir),
    }
  )
  _write_scores_csv(os.path.join(output, "scores.csv"), *predictor.table(class_names, totals, columns))
  strict, undefined = metrics.with_nulls(result)  # strict JSON: null, and why, for scores the split leaves undefined
  write_json_atomic(os.path.join(output, "metrics.json"), strict | ({"undefined": undefined} if undefined else {}))
  plots.save_risk_coverage_png(
    os.path.join(output, "risk_coverage.png"),
    predictor.curves(totals, columns),
    f"{split_name}: risk vs coverage (n={result['n']})",
  )
  if len(class_names) > 2:
    row = predictor.rows[0]  # the aggregator whose predictions the matrix counts
    confusion = result[row]["classes"]["confusion_matrix"]
    title = f"{split_name}, {AGGREGATOR_TITLES.get(row, row)}"
    plots.save_confusion_matrix_png(os.path.join(output, "confusion_matrix.png"), confusion, class_names, title)
  partial.remove()
  clock.lap("writing")
  log.info("%s %s", TIMING_LOG, json.dumps(clock.laps))
  return result


def _halves(predictor, totals, labels, temperature: float, prior) -> dict:
  """metrics.json's rows on each half of the split (`pipeline.half_split`, seed 0), the one a setting was chosen on
  and the one to report it on (`config.evals.*.half`)."""
  halves = {}
  for name, indices in zip(pipeline.HALVES[1:], pipeline.half_split(labels), strict=True):
    if len(indices):
      _, halves[name] = predictor.report(report.subset(totals, np.isin(totals.index, indices)), temperature, prior)
  return {"seed": 0, **halves}


# The log line benchmarks.score reads: seconds of data loading, model loading, network evaluations and writing, each
# without compilation, and of compilation (tracing, lowering and XLA, or loading from the compilation cache).
TIMING_LOG = "Seconds spent:"


class Stopwatch:
  """Wall seconds of named consecutive phases, less the compilation within them, which `laps['compilation']`
  totals."""

  def __init__(self):
    self.compiling = runtime.CompileClock()
    self.laps = {"compilation": 0.0}
    self._last, self._compiled = time.perf_counter(), 0.0

  def lap(self, name: str) -> None:
    now, compiled = time.perf_counter(), self.compiling.seconds
    self.laps[name] = round(self.laps.get(name, 0.0) + (now - self._last) - (compiled - self._compiled), 3)
    self.laps["compilation"] = round(compiled, 3)
    self._last, self._compiled = now, compiled


def _fit_or_fall_back(config, workdir: str, step: int, split_name: str, totals, whole: bool = True):
  """(T, where it came from): fitted on the eval split and, when the whole split was scored and the fit is not
  degenerate, stored for this checkpoint and these settings; other splits fall back to T = 1 with a warning."""
  if split_name != config.data.eval_split:
    log.warning(
      "No temperature fitted for this checkpoint and these classify settings (error, t range, draws); score the "
      "%s split first or set --config.classify.temperature. Using T = 1",
      config.data.eval_split,
    )
    return 1.0, "fallback 1.0: none fitted for these settings"
  temperature = metrics.fit_temperature(totals.logits(), totals.label)
  if metrics.temperature_is_degenerate(temperature):
    log.warning(
      "The temperature fitted on %s is degenerate (T = %.3g, at the edge of the search): the mean errors do not "
      "separate the classes there (an untrained model?); it is used for this run but not stored",
      split_name,
      temperature,
    )
    return temperature, f"degenerate fit on {split_name}, not stored"
  if not whole:
    log.warning(
      "Fitted T = %.4g on the first %d images of %s for this run only", temperature, len(totals.label), split_name
    )
    return temperature, f"fitted on the first {len(totals.label)} images of {split_name}, not stored"
  key = modeldir.calibration_key(config, step)
  modeldir.store_temperature(workdir, key, temperature, split_name, len(totals.label))
  log.info("Fitted temperature %.4g on %s; stored in %s", temperature, split_name, workdir)
  return temperature, f"fitted on {split_name} now"


def _write_scores_csv(path: str, header: list[str], rows: list[list]) -> None:
  """scores.csv, one row per image sorted by index (predictors' `table`), written atomically."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  write_text_atomic(path, buffer.getvalue())
