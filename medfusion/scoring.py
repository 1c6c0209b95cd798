"""Batch scoring of a split with the diffusion classifier: scores.csv, metrics.json, risk_coverage.png.

Scoring runs in blocks of images; each finished block is appended to `OUT/scores.partial.csv` and flushed to
disk, so a run killed at any moment and started again with the same arguments continues after the last
complete block. The final files are written atomically at the end, each image exactly once.
"""

import csv
import io
import json
import logging
import os
import time

import numpy as np
import tqdm

from medfusion import checkpoint, configcheck, metrics, plots, sharding
from medfusion import state as state_lib
from medfusion.classify import aggregate
from medfusion.classify.classifier import DiffusionClassifier, Tally
from medfusion.data import pipeline
from medfusion.errors import UserError
from medfusion.writers import write_json_atomic

log = logging.getLogger("medfusion")

CALIBRATION_FILE = "calibration.json"
EXPORT_META = "export.json"
COVERAGES = (0.5, 0.8, 0.9)


def load_ema_params(config, workdir: str):
  """(EMA params, checkpoint step) of an exported model (`workdir/params`, e.g. pretrained/), else of the
  workdir's best checkpoint, else its latest."""
  model = state_lib.make_model(config)
  optimizer = state_lib.make_optimizer(config.train)
  abstract = state_lib.abstract_state(config, model, optimizer, sharding.replicated(sharding.make_mesh()))
  if os.path.isdir(os.path.join(workdir, checkpoint.EXPORT_DIR)):
    with open(os.path.join(workdir, EXPORT_META)) as f:
      step = json.load(f)["checkpoint_step"]
    return checkpoint.load_exported_params(workdir, abstract.ema_params), step
  state, _, step = checkpoint.restore_for_inference(workdir, abstract)
  return state.ema_params, step


def export(config, workdir: str, output: str) -> int:
  """Copies the workdir's best EMA parameters, calibration and config into `output` (a shippable model)."""
  params, step = load_ema_params(config, workdir)
  os.makedirs(output, exist_ok=True)
  checkpoint.export_params(params, output)
  write_json_atomic(os.path.join(output, EXPORT_META), {"checkpoint_step": step, "source_workdir": workdir})
  write_json_atomic(os.path.join(output, "config.json"), json.loads(config.to_json_best_effort()))
  calibration = os.path.join(workdir, CALIBRATION_FILE)
  if os.path.exists(calibration):
    with open(calibration) as f:
      write_json_atomic(os.path.join(output, CALIBRATION_FILE), json.load(f))
  return step


def temperature_for(config, workdir: str, step: int) -> float | None:
  """The temperature fitted on the validation split for this checkpoint step, if one was stored."""
  path = os.path.join(workdir, CALIBRATION_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    stored = json.load(f)
  return float(stored["temperature"]) if stored.get("checkpoint_step") == step else None


def columns(class_names) -> list[str]:
  per_class = [f"{what}_{name}" for what in ("votes", "mean_error", "prob") for name in class_names]
  return ["index", "label", "prediction", "prediction_mean", *per_class, "vote_share", "entropy", "margin", "nfe"]


def rows_for(tally: Tally, indices, labels, temperature: float) -> list[list]:
  """One CSV row per image; probabilities are softmax(-mean error / T)."""
  mean_errors = tally.mean_errors
  vote = aggregate.vote_prediction(tally.votes, mean_errors)
  mean = aggregate.mean_prediction(mean_errors)
  probs = metrics.softmax_with_temperature(-mean_errors, temperature)
  share = tally.votes[np.arange(len(vote)), vote] / tally.draws
  entropy = metrics.vote_entropy(tally.votes)
  margin = metrics.normalised_margin(mean_errors)
  rows = []
  for i in range(len(indices)):
    rows.append(
      [int(indices[i]), int(labels[i]), int(vote[i]), int(mean[i]), *map(int, tally.votes[i])]
      + [f"{e:.8g}" for e in mean_errors[i]]
      + [f"{p:.8g}" for p in probs[i]]
      + [f"{share[i]:.6g}", f"{entropy[i]:.6g}", f"{margin[i]:.6g}", int(tally.nfe[i])]
    )
  return rows


class PartialScores:
  """The append-only partial CSV of an interrupted run, and the settings it was made with."""

  def __init__(self, output: str, header: list[str], fingerprint: dict):
    self.path = os.path.join(output, "scores.partial.csv")
    self.header = header
    fingerprint_path = os.path.join(output, "scores.partial.json")
    if os.path.exists(self.path) and os.path.exists(fingerprint_path):
      with open(fingerprint_path) as f:
        if json.load(f) != fingerprint:
          raise UserError(
            f"{output} holds a partial scoring run with other settings (checkpoint, split or classify config); "
            "use another --output or delete it"
          )
    else:
      write_json_atomic(fingerprint_path, fingerprint)
      with open(self.path, "w") as f:
        f.write(",".join(header) + "\n")
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

  def append(self, rows: list[list]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    with open(self.path, "a") as f:
      f.write(buffer.getvalue())
      f.flush()
      os.fsync(f.fileno())
    for row in rows:
      self.done[int(row[0])] = [str(x) for x in row]


def aggregate_metrics(table: dict[str, np.ndarray], class_names, temperature: float) -> dict:
  """metrics.json: per aggregator (vote, mean) classification and uncertainty metrics, plus n and NFE."""
  labels = table["label"]
  votes = np.stack([table[f"votes_{n}"] for n in class_names], axis=1)
  probs = np.stack([table[f"prob_{n}"] for n in class_names], axis=1)
  vote_probs = votes / votes.sum(axis=1, keepdims=True)
  result = {"n": int(len(labels)), "nfe_per_image": float(table["nfe"].mean()), "temperature": temperature}
  for name, preds, p, confidence in (
    ("vote", table["prediction"], vote_probs, table["vote_share"]),
    ("mean", table["prediction_mean"], probs, probs.max(axis=1)),
  ):
    m = metrics.classification_metrics(labels, p, preds, confidence=confidence)
    correct = preds == labels
    for cov in COVERAGES:
      m[f"accuracy_at_{int(cov * 100)}_coverage"] = metrics.accuracy_at_coverage(correct, confidence, cov)
    result[name] = m
  return result


def score_split(config, workdir: str, split_name: str, output: str, max_examples: int = 0) -> dict:
  """Scores `split_name` with the workdir's best checkpoint into `output`; returns metrics.json's content."""
  configcheck.check(config)
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} does not exist")
  split = pipeline.load_split(config.data, split_name)
  n = len(split.labels) if max_examples <= 0 else min(max_examples, len(split.labels))
  params, step = load_ema_params(config, workdir)
  temperature = temperature_for(config, workdir, step)
  class_names = list(config.data.class_names)
  header = columns(class_names)
  os.makedirs(output, exist_ok=True)
  fingerprint = {
    "workdir": os.path.abspath(workdir),
    "checkpoint_step": step,
    "split": split_name,
    "n": n,
    "data": config.data.to_dict() | {"class_names": class_names},
    "classify": config.classify.to_dict(),
    "seed": config.seed,
    "temperature": temperature,
  }
  partial = PartialScores(output, header, json.loads(json.dumps(fingerprint, default=list)))
  clf = DiffusionClassifier(config, params)
  block = config.classify.batch_size * 4
  bar = tqdm.tqdm(total=n, initial=len(partial.done), desc=f"score {split_name}", unit="img")
  started, scored = time.perf_counter(), 0
  for batch in pipeline.eval_batches(split, block, 0, n):
    keep = batch["valid"] & ~np.isin(batch["index"], list(partial.done))
    if not keep.any():
      continue
    images, indices, labels = batch["image"][keep], batch["index"][keep], batch["label"][keep]
    tally = clf.score(images, indices)
    partial.append(rows_for(tally, indices, labels, temperature or config.classify.temperature))
    scored += len(indices)
    bar.update(len(indices))
    bar.set_postfix(img_s=f"{scored / (time.perf_counter() - started):.1f}")
  bar.close()

  table = _as_table(partial, header)
  mean_errors = np.stack([table[f"mean_error_{c}"] for c in class_names], axis=1)
  if temperature is None:
    if split_name == config.data.eval_split:
      temperature = metrics.fit_temperature(-mean_errors, table["label"])
      write_json_atomic(
        os.path.join(workdir, CALIBRATION_FILE),
        {"temperature": temperature, "checkpoint_step": step, "fitted_on": split_name, "n": int(len(mean_errors))},
      )
      log.info("Fitted temperature %.4g on %s; stored in %s", temperature, split_name, workdir)
    else:
      temperature = config.classify.temperature
      log.warning("No temperature fitted for this checkpoint; score the validation split first. Using %g", temperature)
  # Probabilities from the mean errors as stored in the CSV, so a resumed run's values equal an uninterrupted one's.
  probs = metrics.softmax_with_temperature(-mean_errors, temperature)
  for j, c in enumerate(class_names):
    table[f"prob_{c}"] = probs[:, j]

  result = aggregate_metrics(table, class_names, temperature)
  result.update({"split": split_name, "checkpoint_step": step, "workdir": os.path.abspath(workdir)})
  _write_csv_atomic(os.path.join(output, "scores.csv"), header, table)
  write_json_atomic(os.path.join(output, "metrics.json"), result)
  curves = {}
  for name, preds, confidence in (
    ("vote", table["prediction"], table["vote_share"]),
    ("mean", table["prediction_mean"], np.max(np.stack([table[f"prob_{c}"] for c in class_names], 1), 1)),
  ):
    curves[name] = metrics.risk_coverage(preds == table["label"], confidence)
  plots.save_risk_coverage_png(
    os.path.join(output, "risk_coverage.png"), curves, f"{split_name}: risk vs coverage (n={result['n']})"
  )
  os.remove(partial.path)
  os.remove(os.path.join(output, "scores.partial.json"))
  return result


def _as_table(partial: PartialScores, header: list[str]) -> dict[str, np.ndarray]:
  rows = [partial.done[i] for i in sorted(partial.done)]
  table = {}
  for j, name in enumerate(header):
    values = [r[j] for r in rows]
    is_int = name in ("index", "label", "prediction", "prediction_mean", "nfe") or name.startswith("votes_")
    table[name] = np.array(values, dtype=np.int64 if is_int else np.float64)
  return table


def _write_csv_atomic(path: str, header: list[str], table: dict[str, np.ndarray]) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    for i in range(len(table["index"])):
      writer.writerow([_fmt(table[name][i]) for name in header])
  os.replace(tmp, path)


def _fmt(value) -> str:
  return str(int(value)) if isinstance(value, np.integer) else f"{value:.8g}"
