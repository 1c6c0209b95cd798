r"""What a user waits for: `medfusion.score` on a whole split, end to end (command start to metrics.json).

  python -m benchmarks.score --workdir=pretrained/pneumoniamnist --split=val \
    --rules="full:--config.classify.adaptive=none,default:"

Each rule is `name:overrides` (space-separated `--config.x=v` flags added to --overrides); every rule runs as its
own fresh process, compilation, data loading and model loading included. Reports per rule the wall time (and its
parts: start-up, data, model, compilation, network evaluations, writing), images/s, network evaluations per
image, both aggregators' accuracy and AUC, and the share of predictions equal to the first rule's first run's.
`--runs=2 --fresh_cache` shows what the persistent compilation cache saves a second run. The device is described
after the runs, so this process never holds accelerator memory while they run.
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
from medfusion.evaluation import split_scoring  # noqa: E402

flags.DEFINE_string("workdir", "pretrained/pneumoniamnist", "Model to score (exported folder or training workdir).")
flags.DEFINE_string("split", "val", "Split to score.")
flags.DEFINE_string("rules", "full:--config.classify.adaptive=none,default:", "name:overrides,...")
flags.DEFINE_string("overrides", "", "Flags added to every rule (e.g. the data folder on a machine without TF).")
flags.DEFINE_integer("max_examples", 0, "Score only the first N images (0: the whole split).", lower_bound=0)
flags.DEFINE_integer(
  "runs", 1, "Runs of each rule in a row: the first fills the compilation cache, later ones read it.", lower_bound=1
)
flags.DEFINE_bool("fresh_cache", False, "Start from an empty compilation cache (a scratch JAX_COMPILATION_CACHE_DIR).")
FLAGS = flags.FLAGS


def _predictions(output: str) -> dict[str, list[str]]:
  with open(os.path.join(output, "scores.csv")) as f:
    rows = list(csv.DictReader(f))
  return {key: [r[key] for r in rows] for key in ("prediction", "prediction_mean")}


def phases(stderr: str, seconds: float) -> dict[str, float]:
  """Where a scoring process spent `seconds`: its own log line (split_scoring.TIMING_LOG: data, model, network,
  writing, compilation) and start-up, the rest (Python, imports, flags and config, until the data is read)."""
  line = next(line for line in reversed(stderr.splitlines()) if split_scoring.TIMING_LOG in line)
  spent = json.loads(line.split(split_scoring.TIMING_LOG, 1)[1])
  return {"start_up": round(seconds - sum(spent.values()), 2), **spent}


def _rounded(value):
  return None if value is None else round(value, 4)  # null: undefined on these images (metrics.json says why)


def run_rule(name: str, overrides: list[str], scratch: str, run: int) -> tuple[dict, dict]:
  output = os.path.join(scratch, f"{name}_{run}")
  command = [sys.executable, "-m", "medfusion.score", f"--workdir={FLAGS.workdir}", f"--split={FLAGS.split}"]
  command += [f"--output={output}", f"--max_examples={FLAGS.max_examples}", *shlex.split(FLAGS.overrides), *overrides]
  env = {**os.environ}
  if FLAGS.fresh_cache:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(scratch, "jax_cache")
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, env=env)
  seconds = time.perf_counter() - start
  if done.returncode:
    return {"rule": name, "error": done.stderr.strip().splitlines()[-1:]}, {}
  with open(os.path.join(output, "metrics.json")) as f:
    result = json.load(f)
  record = {
    "rule": name,
    "run": run,
    "command": shlex.join(command[1:]),
    "overrides": overrides,
    "seconds_end_to_end": round(seconds, 2),
    "seconds": phases(done.stderr, seconds),
    "n": result["n"],
    "images_per_s": round(result["n"] / seconds, 2),
    "nfe_per_image": round(result["nfe_per_image"], 2),
    **{f"{agg}_{m}": _rounded(result[agg][m]) for agg in ("vote", "mean") for m in ("accuracy", "auc")},
  }
  return record, _predictions(output)


def main(argv):
  del argv
  rules = [rule.partition(":") for rule in common.parse_list(FLAGS.rules)]
  records, first = [], None
  with tempfile.TemporaryDirectory() as scratch:
    for name, _, overrides in rules:
      for run in range(1, FLAGS.runs + 1):
        record, predictions = run_rule(name, shlex.split(overrides), scratch, run)
        if predictions and first is None:
          first = predictions
        elif predictions:
          for key in predictions:
            same = sum(a == b for a, b in zip(predictions[key], first[key], strict=True)) / len(first[key])
            record[f"agreement_{key}"] = round(same, 4)
        records.append(record)
        print(json.dumps(record), flush=True)
  settings = {"workdir": FLAGS.workdir, "split": FLAGS.split, "rules": FLAGS.rules, "max_examples": FLAGS.max_examples}
  settings.update(runs=FLAGS.runs, fresh_cache=FLAGS.fresh_cache)
  payload = common.header("score", settings, "")
  payload.update(results=records, complete=True)
  path = common.result_path("score", payload["device"]["device_kind"], common.FLAGS.out_dir, common.FLAGS.tag)
  common.write_json(path, payload)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
