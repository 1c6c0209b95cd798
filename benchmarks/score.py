r"""What a user waits for: `medfusion.score` on a whole split, end to end (command start to metrics.json).

  python -m benchmarks.score --workdir=pretrained/pneumoniamnist --split=val \
    --rules="full:--config.classify.adaptive=none,default:"

Each rule is `name:overrides` (space-separated `--config.x=v` flags added to --overrides); every rule runs as its
own fresh process, compilation, data loading and model loading included. Reports per rule the wall time, images/s,
network evaluations per image, both aggregators' accuracy and AUC, and the share of predictions equal to the first
rule's. The device is described after the runs, so this process never holds accelerator memory while they run.
"""

import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import app, flags  # noqa: E402

from benchmarks import common  # noqa: E402

flags.DEFINE_string("workdir", "pretrained/pneumoniamnist", "Model to score (exported folder or training workdir).")
flags.DEFINE_string("split", "val", "Split to score.")
flags.DEFINE_string("rules", "full:--config.classify.adaptive=none,default:", "name:overrides,...")
flags.DEFINE_string("overrides", "", "Flags added to every rule (e.g. the data folder on a machine without TF).")
FLAGS = flags.FLAGS


def _predictions(output: str) -> dict[str, list[str]]:
  with open(os.path.join(output, "scores.csv")) as f:
    rows = list(csv.DictReader(f))
  return {key: [r[key] for r in rows] for key in ("prediction", "prediction_mean")}


def run_rule(name: str, overrides: list[str], scratch: str) -> tuple[dict, dict]:
  output = os.path.join(scratch, name)
  command = [sys.executable, "-m", "medfusion.score", f"--workdir={FLAGS.workdir}", f"--split={FLAGS.split}"]
  command += [f"--output={output}", *shlex.split(FLAGS.overrides), *overrides]
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode:
    return {"rule": name, "error": done.stderr.strip().splitlines()[-1:]}, {}
  with open(os.path.join(output, "metrics.json")) as f:
    result = json.load(f)
  record = {
    "rule": name,
    "overrides": overrides,
    "seconds_end_to_end": round(seconds, 2),
    "n": result["n"],
    "images_per_s": round(result["n"] / seconds, 2),
    "nfe_per_image": round(result["nfe_per_image"], 2),
    **{f"{agg}_{m}": round(result[agg][m], 4) for agg in ("vote", "mean") for m in ("accuracy", "auc")},
  }
  return record, _predictions(output)


def main(argv):
  del argv
  rules = [rule.partition(":") for rule in common.parse_list(FLAGS.rules)]
  records, first = [], None
  with tempfile.TemporaryDirectory() as scratch:
    for name, _, overrides in rules:
      record, predictions = run_rule(name, shlex.split(overrides), scratch)
      if predictions and first is None:
        first = predictions
      elif predictions:
        for key in predictions:
          same = sum(a == b for a, b in zip(predictions[key], first[key], strict=True)) / len(first[key])
          record[f"agreement_{key}"] = round(same, 4)
      records.append(record)
      print(json.dumps(record), flush=True)
  payload = common.header("score", {"workdir": FLAGS.workdir, "split": FLAGS.split, "rules": FLAGS.rules}, "")
  payload.update(results=records, complete=True)
  path = common.result_path("score", payload["device"]["device_kind"], common.FLAGS.out_dir, common.FLAGS.tag)
  common.write_json(path, payload)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
