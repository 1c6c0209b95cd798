"""Batch scoring of a split with the diffusion classifier: scores.csv, metrics.json, risk_coverage.png.

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
from medfusion.classify.classifier import DiffusionClassifier
from medfusion.data import pipeline
from medfusion.errors import Interrupted, UserError
from medfusion.evaluation import report, split_runner
from medfusion.evaluation.report import Totals
from medfusion.writers import write_json_atomic

log = logging.getLogger("medfusion")

PARTIAL_CSV, PARTIAL_SETTINGS = "scores.partial.csv", "scores.partial.json"


def _partial_header(class_names) -> list[str]:
  return ["index", "label", *[f"votes_{c}" for c in class_names], *[f"mean_error_{c}" for c in class_names]] + [
    "draws",
    "nfe",
  ]


def _partial_rows(totals: Totals) -> list[list]:
  return [
    [int(totals.index[i]), int(totals.label[i]), *map(int, totals.votes[i])]
    + [repr(float(e)) for e in totals.mean_error[i]]
    + [int(totals.draws[i]), int(totals.nfe[i])]
    for i in range(len(totals.index))
  ]


class PartialScores:
  """The append-only partial CSV of an interrupted run, and the settings it was made with.

  The files are created with the first block, so a run that fails before it leaves nothing behind.
  """

  def __init__(self, output: str, class_names, fingerprint: dict):
    self.output, self.fingerprint = output, fingerprint
    self.header = _partial_header(class_names)
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

  def append(self, totals: Totals) -> None:
    rows = _partial_rows(totals)
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

  def totals(self, num_classes: int) -> Totals:
    """The stored totals of every image done, sorted by index."""
    rows = np.array([self.done[i] for i in sorted(self.done)], dtype=object).reshape(-1, len(self.header))
    c = num_classes
    as_int = rows[:, [0, 1, *range(2, 2 + c), -2, -1]].astype(np.int64)
    return Totals(
      index=as_int[:, 0],
      label=as_int[:, 1],
      votes=as_int[:, 2 : 2 + c],
      mean_error=rows[:, 2 + c : 2 + 2 * c].astype(np.float64),
      draws=as_int[:, -2],
      nfe=as_int[:, -1],
    )

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
  model = modeldir.load_ema_params(config, workdir)
  temperature, temperature_source = modeldir.temperature(config, workdir, model.step)
  class_names = list(config.data.class_names)
  fingerprint = {
    "workdir": os.path.abspath(workdir),
    "checkpoint_step": model.step,
    "split": split_name,
    "n": n,
    "data": config.data.to_dict() | {"class_names": class_names},
    "classify": config.classify.to_dict(),
    "seed": config.seed,
  }
  partial = PartialScores(output, class_names, json.loads(json.dumps(fingerprint, default=list)))
  classifier = DiffusionClassifier(config, model.params, source=model.description)
  try:
    with split_runner.progress_bar(n, f"score {split_name}", initial=len(partial.done)) as bar:
      for totals in split_runner.classify_split(
        classifier, split, n, config.classify.batch_size * 4, skip=partial.done, progress=bar.update
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
  if config.classify.prior != "uniform":
    train_labels = (
      pipeline.load_split(config.data, config.data.train_split).labels if config.classify.prior == "train" else None
    )
    prior = report.class_prior(config.classify.prior, train_labels, len(class_names))
  columns = report.per_image(totals, temperature, prior)
  result = report.split_metrics(totals, columns, class_names, config.classify.positive_class)
  result.update(
    {
      "temperature": temperature,
      "temperature_source": temperature_source,
      "prior": config.classify.prior if prior is None else prior.tolist(),
      "split": split_name,
      "checkpoint_step": model.step,
      "checkpoint": model.which,
      "checkpoint_path": model.path,
      "workdir": os.path.abspath(workdir),
    }
  )
  _write_scores_csv(os.path.join(output, "scores.csv"), class_names, totals, columns)
  write_json_atomic(os.path.join(output, "metrics.json"), result)
  plots.save_risk_coverage_png(
    os.path.join(output, "risk_coverage.png"),
    report.risk_coverage_curves(totals, columns),
    f"{split_name}: risk vs coverage (n={result['n']})",
  )
  if len(class_names) > 2:
    confusion = result["vote"]["classes"]["confusion_matrix"]
    plots.save_confusion_matrix_png(os.path.join(output, "confusion_matrix.png"), confusion, class_names, split_name)
  partial.remove()
  return result


def _fit_or_fall_back(config, workdir: str, step: int, split_name: str, totals: Totals, whole: bool = True):
  """(T, where it came from): fitted on the eval split and, when the whole split was scored and the fit is not
  degenerate, stored for this checkpoint and these settings; other splits fall back to T = 1 with a warning."""
  if split_name != config.data.eval_split:
    log.warning(
      "No temperature fitted for this checkpoint and these classify settings (error, t range, draws); score the "
      "%s split first or set --config.classify.temperature. Using T = 1",
      config.data.eval_split,
    )
    return 1.0, "fallback 1.0: none fitted for these settings"
  temperature = metrics.fit_temperature(-totals.mean_error, totals.label)
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


_FORMATS = {"mean_error": ".8g", "prob": ".8g", "vote_share": ".6g", "entropy": ".6g", "margin": ".6g"}


def _write_scores_csv(path: str, class_names, totals: Totals, columns: dict) -> None:
  """scores.csv, one row per image sorted by index, via a temporary file and a rename."""
  header = ["index", "label", "prediction", "prediction_mean"]
  header += [f"{what}_{c}" for what in ("votes", "mean_error", "prob") for c in class_names]
  header += ["vote_share", "entropy", "margin", "nfe"]
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    for i in range(len(totals.index)):
      writer.writerow(
        [totals.index[i], totals.label[i], columns["prediction"][i], columns["prediction_mean"][i]]
        + list(totals.votes[i])
        + [format(e, _FORMATS["mean_error"]) for e in totals.mean_error[i]]
        + [format(p, _FORMATS["prob"]) for p in columns["prob"][i]]
        + [format(columns[k][i], _FORMATS[k]) for k in ("vote_share", "entropy", "margin")]
        + [totals.nfe[i]]
      )
  os.replace(tmp, path)
