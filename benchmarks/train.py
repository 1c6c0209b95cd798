r"""Throughput of the train step (`medfusion.trainer.make_train_step`) on synthetic batches.

  python -m benchmarks.train --model=small --dtypes=float32,bfloat16 --repeats=3 --cpu_ynnpack=default,off

For each model preset (small: configs/default.py; paper: `default.paper`) and compute dtype (`config.model.dtype`;
parameters stay float32) it reports the compile time, steps/s, images/s, XLA's FLOPs per step and their fraction
of the peak, and peak memory. On CPU each `--cpu_ynnpack` setting runs in its own subprocess (XLA flags are
process-wide) and the results are merged into one JSON file under benchmarks/results/ (see README.md there).
"""

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from configs import default
from medfusion import platform, sharding
from medfusion import state as state_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "small", "Comma-separated presets: small (configs/default.py), paper (default.paper).")
flags.DEFINE_string("dtypes", "float32,bfloat16", "Comma-separated compute dtypes (config.model.dtype).")
flags.DEFINE_integer("batch_size", 0, "Global batch. 0: small the config's (32); paper 2 on CPU, 8 elsewhere.")
flags.DEFINE_integer("steps", 0, "Steps per timed repeat. 0: 3 on CPU, 10 elsewhere.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after compiling.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (the median step time is reported).")
flags.DEFINE_integer("matmul_repeats", 5, "Timed repeats of the matmul that measures the CPU peak.")
flags.DEFINE_string("cpu_ynnpack", "default,off", "CPU only: comma-separated config.cpu_ynnpack settings to compare.")
flags.DEFINE_string("out_dir", "", "Folder for the JSON file. Default: benchmarks/results.")
flags.DEFINE_string("tag", "", "Appended to the JSON file's name, so runs of one day do not replace each other.")
flags.DEFINE_string("note", "", "Free text stored in the JSON (for example, what else was running).")
flags.DEFINE_string("child_ynnpack", "", "Internal: run as the subprocess for this cpu_ynnpack setting.")
flags.DEFINE_string("child_output", "", "Internal: where that subprocess writes its records.")


def model_config(name: str, dtype: str, batch_size: int):
  config = default.get_config()
  if name == "paper":
    config = default.paper(config)
  elif name != "small":
    raise ValueError(f"--model: '{name}' is not one of ('small', 'paper')")
  on_cpu = jax.default_backend() == "cpu"
  config.model.dtype = dtype
  config.train.batch_size = batch_size or (config.train.batch_size if name == "small" else 2 if on_cpu else 8)
  return config


def throughput(name: str, dtype: str, peaks: dict) -> dict:
  from medfusion import trainer

  config = model_config(name, dtype, FLAGS.batch_size)
  b, size, channels = config.train.batch_size, config.data.image_size, config.data.num_channels
  steps = FLAGS.steps or (3 if jax.default_backend() == "cpu" else 10)
  print(f"[train] {name} {dtype}: batch {b}, image {size}x{size}x{channels}", file=sys.stderr, flush=True)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(b, "--batch_size")
  rep = sharding.replicated(mesh)
  model = state_lib.make_model(config)
  optimizer = state_lib.make_optimizer(config.train)
  common.reset_peak_memory()
  # Runs once: optimisation level 0 compiles several times faster on CPU and does not affect the step.
  init = jax.jit(
    lambda: state_lib.init_state(config, model, optimizer),
    out_shardings=rep,
    compiler_options={"xla_backend_optimization_level": 0},
  )
  state = init()
  rng = np.random.default_rng(0)
  batch = sharding.to_global(
    mesh,
    {
      "image": rng.uniform(-1, 1, (b, size, size, channels)).astype(np.float32),
      "label": rng.integers(0, config.data.num_classes, b).astype(np.int32),
    },
  )
  step_fn = trainer.make_train_step(config, model, optimizer, mesh)
  start = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = common.xla_flops(lowered)  # pre-optimisation HLO: backend-independent, no loops in a train step

  def run(n):
    nonlocal state
    for _ in range(n):
      state, metrics = compiled(state, batch)
    return metrics["loss"]

  if FLAGS.warmup_steps:
    jax.block_until_ready(run(FLAGS.warmup_steps))
  t = common.timed(lambda: run(steps), warmup=0, repeats=FLAGS.repeats)
  loss = float(run(1))
  step_s = t["median_s"] / steps
  return {
    "model": name,
    "dtype": dtype,
    "image_shape": [size, size, channels],
    "batch_size": b,
    "num_params": state_lib.count_params(state.params),
    "steps_per_repeat": steps,
    "warmup_steps": FLAGS.warmup_steps,
    "compile_s": compile_s,
    "time": t,
    "step_s": step_s,
    "steps_per_s": 1.0 / step_s,
    "images_per_s": b / step_s,
    "xla_flops_per_step": flops,
    "xla_flops_compiled_as_reported": common.xla_flops(compiled),
    **common.utilisation(flops, step_s, peaks, dtype),
    "xla_memory_analysis": common.memory_analysis(compiled),
    "peak_memory": common.peak_memory(),
    "final_loss_finite": bool(np.isfinite(loss)),
  }


def measure(ynnpack: str | None, emit) -> None:
  dtypes = common.parse_list(FLAGS.dtypes)
  run = {
    "cpu_ynnpack": ynnpack,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "peaks": common.peaks(dtypes, FLAGS.matmul_repeats),
    "results": [],
  }
  emit(run)
  for name in common.parse_list(FLAGS.model):
    for dtype in dtypes:
      try:
        run["results"].append(throughput(name, dtype, run["peaks"]))
      except Exception as e:  # noqa: BLE001 - one failed configuration (say, out of memory) must not lose the rest
        run["results"].append({"model": name, "dtype": dtype, "error": f"{type(e).__name__}: {e}"})
      emit(run)


def summary(runs: list[dict]) -> list[dict]:
  rows = []
  for run in runs:
    for r in run.get("results", []):
      row = {"model": r.get("model"), "dtype": r.get("dtype"), "cpu_ynnpack": run.get("cpu_ynnpack")}
      if "error" in r:
        rows.append({**row, "error": r["error"]})
        continue
      rows.append(
        {
          **row,
          "batch_size": r["batch_size"],
          "steps_per_s": round(r["steps_per_s"], 3),
          "images_per_s": round(r["images_per_s"], 1),
          "fraction_of_peak": r["fraction_of_peak"],
          **({"fraction_of_tf32_peak": r["fraction_of_tf32_peak"]} if "fraction_of_tf32_peak" in r else {}),
          "compile_s": round(r["compile_s"], 1),
        }
      )
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  common.quiet_logging()
  if FLAGS.child_ynnpack:  # a per-setting subprocess: XLA_FLAGS was set by the parent
    platform.configure_cpu(FLAGS.child_ynnpack)
    measure(FLAGS.child_ynnpack, lambda run: common.write_json(FLAGS.child_output, [run]))
    return

  names = ("model", "dtypes", "batch_size", "steps", "warmup_steps", "repeats", "cpu_ynnpack", "tag")
  payload = common.header("train", {n: FLAGS[n].value for n in names}, FLAGS.note)
  path = common.result_path("train", payload["device"]["device_kind"], FLAGS.out_dir, FLAGS.tag)
  payload["runs"] = []

  def save():
    payload["summary"] = summary(payload["runs"])
    common.write_json(path, payload)

  if jax.default_backend() == "cpu":
    child_argv = [a for a in sys.argv[1:] if not a.startswith("--child_")]
    for ynnpack in common.parse_list(FLAGS.cpu_ynnpack):
      payload["runs"].extend(common.run_child("benchmarks.train", ynnpack, child_argv))
      save()
  else:
    payload["runs"].append({})

    def emit(run):
      payload["runs"][-1] = run
      save()

    measure(None, emit)
  payload["complete"] = True
  save()
  print(json.dumps(payload["summary"], indent=1))
  print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
