"""Batch scoring of a split with a trained model (the diffusion classifier or a ResNet, evaluation/predictors.py):
scores.csv, metrics.json, risk_coverage.png.

Scoring runs in blocks of images; each finished block's totals are appended to `OUT/scores.partial.csv` and
flushed to disk, so a run killed at any moment and started again with the same arguments continues after the last
complete block. Nothing is written before the first block is scored; the final files are written atomically at
the end, each image exactly once, and everything in them is computed from the stored totals, so a resumed run's
files equal an uninterrupted one's.
"""

import csv
import io
import json
import logging
import os

import jax
import numpy as np

from medfusion import metrics, modeldir, plots
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
    rows = self.predictor.partial_rows(totals)
    for row in rows:
      self.done[int(row[0])] = [str(x) for x in row]
    if jax.process_index() != 0:  # every process holds the same totals; process 0 writes them
      return
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


def score_split(config, workdir: str, split_name: str, output: str, max_examples: int = 0) -> dict:
  """Scores `split_name` with the workdir's best checkpoint into `output`; returns metrics.json's content."""
  split = pipeline.load_split(config.data, split_name)
  n = len(split.labels) if max_examples <= 0 else min(max_examples, len(split.labels))
  model = modeldir.load(config, workdir)
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
  predictor = predictors.make(config, model)  # the diffusion classifier or a ResNet
  fingerprint.update(predictor.settings())
  partial = PartialScores(output, class_names, json.loads(json.dumps(fingerprint, default=list)), predictor)
  try:
    with split_runner.progress_bar(n, f"score {split_name}", initial=len(partial.done)) as bar:
      for totals in split_runner.run_blocks(
        predictor.score, split, n, predictor.batch_size * 4, skip=partial.done, progress=bar.update
      ):
        partial.append(totals)
  except KeyboardInterrupt:
    kept = f"{len(partial.done)} of {n} images are kept in {partial.path}" if partial.done else "nothing was written"
    raise Interrupted(f"{kept}; run the same command again to continue") from None

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
  write_json_atomic(os.path.join(output, "metrics.json"), result)
  plots.save_risk_coverage_png(
    os.path.join(output, "risk_coverage.png"),
    predictor.curves(totals, columns),
    f"{split_name}: risk vs coverage (n={result['n']})",
  )
  if len(class_names) > 2:
    confusion = result[predictor.rows[0]]["classes"]["confusion_matrix"]
    plots.save_confusion_matrix_png(os.path.join(output, "confusion_matrix.png"), confusion, class_names, split_name)
  partial.remove()
  return result


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
