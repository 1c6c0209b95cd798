r"""Throughput of the train step (`medfusion.training.diffusion_trainer.make_train_step`) on synthetic batches.

  python -m benchmarks.train --model=small --dtypes=float32,bfloat16 --repeats=3 --cpu_ynnpack=default,off

For each model preset (small: configs/default.py; paper: `default.paper`) and compute dtype (`config.model.dtype`;
parameters stay float32) it reports the compile time, steps/s, images/s, XLA's FLOPs per step and their fraction
of the peak, and peak memory. On CPU each `--cpu_ynnpack` setting runs in its own subprocess (XLA flags are
process-wide) and the results are merged into one JSON file under benchmarks/results/ (see README.md there).
"""

import sys
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from configs import default
from medfusion import runtime, sharding
from medfusion.training import state as state_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "small", "Comma-separated presets of configs/default.py: small, paper, original_unet, dit")
flags.DEFINE_integer(
  "batch_size", 0, "Global batch. 0: small the config's (32); paper 2 on CPU, 8 elsewhere.", lower_bound=0
)
flags.DEFINE_integer("steps", 0, "Steps per timed repeat. 0: 3 on CPU, 10 elsewhere.", lower_bound=0)
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after compiling.", lower_bound=0)
flags.DEFINE_float(
  "torch_steps_per_s",
  0.0,
  "Optional reference: steps/s of the PyTorch port's medfusion step (shared/perf/torch_port, bench_torch.py train "
  "--kind medfusion) measured in the same session at the same batch; each row then records jax/torch.",
)


def model_config(name: str, dtype: str, batch_size: int):
  if name not in default.MODEL_PRESETS:
    raise ValueError(f"--model: '{name}' is not one of {default.MODEL_PRESETS}")
  config = default.get_config(f"model={name}")
  on_cpu = jax.default_backend() == "cpu"
  config.model.dtype = dtype
  config.train.batch_size = batch_size or (config.train.batch_size if name == "small" else 2 if on_cpu else 8)
  return config


def throughput(name: str, dtype: str, peaks: dict) -> dict:
  from medfusion.training import diffusion_trainer

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
  state = runtime.run_once(lambda: state_lib.init_state(config, model, optimizer), rep)
  rng = np.random.default_rng(0)
  batch = sharding.to_global(
    mesh,
    {
      "image": rng.uniform(-1, 1, (b, size, size, channels)).astype(np.float32),
      "label": rng.integers(0, config.data.num_classes, b).astype(np.int32),
    },
  )
  step_fn = diffusion_trainer.make_train_step(config, model, optimizer, mesh)
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
    "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
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
  common.measure(ynnpack, common.parse_list(FLAGS.model), throughput, emit)


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
          **(
            {
              "torch_steps_per_s": FLAGS.torch_steps_per_s,
              "vs_torch": round(r["steps_per_s"] / FLAGS.torch_steps_per_s, 3),
            }
            if FLAGS.torch_steps_per_s > 0
            else {}
          ),
        }
      )
  return rows


def main(argv):
  names = ("model", "batch_size", "steps", "warmup_steps", "torch_steps_per_s")
  common.main("train", argv, {n: FLAGS[n].value for n in names}, measure, summary)


if __name__ == "__main__":
  app.run(main)
