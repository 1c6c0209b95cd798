r"""Throughput of the error kernel against the per-(draw, class) loop of the original PyTorch code.

  python -m benchmarks.kernel --model=small --dtypes=float32,bfloat16 --num_draws=8 --batch_size=16 \
      --repeats=3 --cpu_ynnpack=default,off
  python -m benchmarks.kernel --workdir=pretrained/pneumoniamnist --config=configs/pneumoniamnist.py --split=val
      # adds the early-stopping figure on a trained model

For each model preset (small: configs/default.py, 32x32x1; paper: `default.paper`, 256x256) and compute dtype
(`config.classify.dtype`) it times one call of the vectorized kernel (`medfusion.classify.kernel.make_kernel`) on
B images x K draws x C classes, and the same errors computed the way the PyTorch code does it: a Python loop
over draws and classes with one jitted model call per (draw, class) on `--loop_batch` images. With `--workdir`
and `--config` (a training workdir or an exported model, and the config it was trained with) it also scores real
images with sequential vote early stopping (`classify.adaptive = 'sequential'`) and compares its images/s with
the loop at the full budget. On CPU each `--cpu_ynnpack` setting runs in its own subprocess (XLA flags are
process-wide) and the results are merged into one JSON file under
benchmarks/results/ (README.md there explains every field).
"""

import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks import common
from configs import default
from medfusion import runtime, sharding
from medfusion.classify import draws, kernel
from medfusion.diffusion import schedules
from medfusion.models import make_denoiser
from medfusion.training import state as state_lib

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "model",
  "",
  "Comma-separated model= presets of configs/default.py (small, paper, original_unet, dit); 'none' (early"
  " stopping only). Default: small on CPU, small,paper elsewhere.",
)
flags.DEFINE_integer(
  "num_draws", 0, "K draws per image. 0: CPU small 8, paper 2; accelerator small 32, paper 8.", lower_bound=0
)
flags.DEFINE_integer(
  "batch_size", 0, "B images per kernel call. 0: CPU small 16, paper 2; accelerator 64 / 16.", lower_bound=0
)
flags.DEFINE_integer("num_classes", 0, "C classes scored per image (synthetic). 0: the config's (2).", lower_bound=0)
flags.DEFINE_integer("chunk_size", 0, "Model evaluations per lax.map step. 0: the config's (32).", lower_bound=0)
flags.DEFINE_integer(
  "loop_batch", 16, "Images per model call in the loop baseline (at most --batch_size).", lower_bound=1
)
flags.DEFINE_string("workdir", "", "Training workdir or exported model: adds the early-stopping figure.")
config_flags.DEFINE_config_file("config", None, "With --workdir: the config the model was trained with.")
flags.DEFINE_string("split", "val", "Split of the workdir config's dataset scored for the early-stopping figure.")
flags.DEFINE_integer("early_stop_images", 128, "Images of --split scored for the early-stopping figure.", lower_bound=1)
flags.DEFINE_integer(
  "early_stop_draws", 0, "Full budget K of the early-stopping figure. 0: the workdir config's.", lower_bound=0
)
flags.DEFINE_integer(
  "early_stop_batch_size", 0, "Images per kernel call there. 0: the workdir config's.", lower_bound=0
)

# (num_draws, batch_size) when the flags are 0, by (platform is CPU, model).
# Every preset but small counts as paper scale here.
AUTO_SIZES = {(True, "small"): (8, 16), (True, "paper"): (2, 2), (False, "small"): (32, 64), (False, "paper"): (8, 16)}


def model_config(name: str):
  """configs/default.py with `model=<name>` (small, paper, original_unet, dit)."""
  if name not in default.MODEL_PRESETS:
    raise ValueError(f"--model: '{name}' is not one of {default.MODEL_PRESETS}")
  return default.get_config(f"model={name}")


def sizes(name: str) -> tuple[int, int]:
  auto_k, auto_b = AUTO_SIZES[(jax.default_backend() == "cpu", "small" if name == "small" else "paper")]
  return FLAGS.num_draws or auto_k, FLAGS.batch_size or auto_b


# --- The loop baseline -------------------------------------------------------------------------------------------


def _prepare(spec: kernel.KernelSpec, images, indices, draw):
  """z_t, eps and log-SNR of one draw for a batch of images: the same draws the kernel uses."""
  keys, t_all = kernel.image_draws(spec, indices)
  t = jnp.take(t_all, draw, axis=1)
  eps = jax.vmap(lambda k: draws.noise(k, draw, images.shape[1:]))(keys)
  logsnr = spec.schedule.logsnr(t)
  return schedules.diffuse(images, eps, logsnr), eps, logsnr


def _evaluate(model, spec: kernel.KernelSpec, params, images, z, eps, logsnr, labels):
  """One model call on a batch of images for one class: errors [L]."""
  out = model.apply({"params": params}, z, logsnr, labels)
  return kernel.pair_error(spec.error, out, images, eps, z, logsnr, spec.prediction)


class Loop:
  """The PyTorch code's structure: for each batch of L images, each draw (z_t made once), each class: one call."""

  def __init__(self, model, spec: kernel.KernelSpec, params, num_classes: int, loop_batch: int):
    self.spec, self.num_classes, self.loop_batch = spec, num_classes, loop_batch
    self.device = jax.devices()[0]  # one device, as the PyTorch code uses one GPU
    self.params = jax.device_put(params, self.device)
    self.prepare = jax.jit(functools.partial(_prepare, spec))
    self.evaluate = jax.jit(functools.partial(_evaluate, model, spec))
    self.labels = [jax.device_put(np.full(loop_batch, c, np.int32), self.device) for c in range(num_classes)]

  def load(self, images: np.ndarray, indices: np.ndarray) -> None:
    """Splits the images into batches of L on the device (the last one padded by repeating its last image)."""
    n, lb = len(images), self.loop_batch
    padded = -(-n // lb) * lb
    images = np.concatenate([images, np.repeat(images[-1:], padded - n, axis=0)])
    indices = np.concatenate([indices, np.repeat(indices[-1:], padded - n)])
    self.n = n
    self.batches = [
      (jax.device_put(images[i : i + lb], self.device), jax.device_put(indices[i : i + lb], self.device))
      for i in range(0, padded, lb)
    ]

  def first_calls(self) -> dict:
    """Compiles both functions by calling each once; seconds of each first call (compile + one run)."""
    x, idx = self.batches[0]
    start = time.perf_counter()
    z, eps, logsnr = jax.block_until_ready(self.prepare(x, idx, np.int32(0)))
    mid = time.perf_counter()
    jax.block_until_ready(self.evaluate(self.params, x, z, eps, logsnr, self.labels[0]))
    return {"prepare_first_call_s": mid - start, "evaluate_first_call_s": time.perf_counter() - mid}

  def run(self) -> list:
    out = []
    for x, idx in self.batches:
      for d in range(self.spec.num_draws):
        z, eps, logsnr = self.prepare(x, idx, np.int32(d))
        for label in self.labels:
          out.append(self.evaluate(self.params, x, z, eps, logsnr, label))
    return out

  def errors(self, outputs) -> np.ndarray:
    """Loop outputs -> errors [N, C, K] in the kernel's layout."""
    k, c, lb = self.spec.num_draws, self.num_classes, self.loop_batch
    e = np.asarray(jax.device_get(outputs)).reshape(len(self.batches), k, c, lb)
    return e.transpose(0, 3, 2, 1).reshape(-1, c, k)[: self.n]

  def counts(self) -> dict:
    nb, k, c = len(self.batches), self.spec.num_draws, self.num_classes
    return {
      "model_calls": nb * k * c,
      "prepare_calls": nb * k,
      "evaluations_incl_padding": nb * k * c * self.loop_batch,
    }

  def flops(self) -> float | None:
    """XLA's FLOPs of one loop run: evaluate x model calls + prepare x prepare calls."""
    x, idx = self.batches[0]
    z, eps, logsnr = self.prepare(x, idx, np.int32(0))
    f_eval = common.xla_flops(self.evaluate.lower(self.params, x, z, eps, logsnr, self.labels[0]))
    f_prep = common.xla_flops(self.prepare.lower(x, idx, np.int32(0)))
    if f_eval is None:
      return None
    counts = self.counts()
    return f_eval * counts["model_calls"] + (f_prep or 0.0) * counts["prepare_calls"]


# --- Throughput --------------------------------------------------------------------------------------------------


def kernel_flops(model, spec, mesh, args) -> float | None:
  """XLA's FLOPs of one kernel call, from the kernel lowered with a single chunk.

  The compiled kernel's own cost analysis counts the `lax.map` body once, not once per chunk, so it undercounts
  by the number of chunks; lowering with chunk_size >= B*C*K makes the loop run once, and the pre-optimisation
  HLO analysis (no second compile) is backend-independent.
  """
  _, images, _, draw_ids, class_ids = args
  n = images.shape[0] * draw_ids.shape[1] * class_ids.shape[1]
  one_chunk = kernel.make_kernel(model, dataclasses.replace(spec, chunk_size=n), mesh)
  return common.xla_flops(one_chunk.lower(*args))


def throughput(name: str, dtype: str, peaks: dict) -> dict:
  """One (model, dtype) measurement: the kernel, then the loop on the same images, draws and classes."""
  config = model_config(name)
  k, b = sizes(name)
  c = FLAGS.num_classes or config.data.num_classes
  config.data.num_classes = c
  config.classify.num_draws, config.classify.batch_size, config.classify.dtype = k, b, dtype
  config.classify.chunk_size = FLAGS.chunk_size or config.classify.chunk_size
  mesh = sharding.make_mesh()
  sharding.check_batch_size(b, "--batch_size")
  model = make_denoiser(config, dtype, 0.0)
  spec = kernel.KernelSpec.from_config(config)
  size, channels = config.data.image_size, config.data.num_channels
  print(f"[kernel] {name} {dtype}: B={b} K={k} C={c} image {size}x{size}x{channels}", file=sys.stderr, flush=True)

  params = runtime.run_once(lambda: state_lib.init_params(config, make_denoiser(config)))
  # Perturb the zero-initialised output layers so the errors differ between classes (timing is unaffected).
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
  params = jax.device_put(params, sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (b, size, size, channels)).astype(np.float32)
  indices = np.arange(b, dtype=np.int32)
  draw_ids = np.broadcast_to(np.arange(k, dtype=np.int32), (b, k)).copy()
  class_ids = np.broadcast_to(np.arange(c, dtype=np.int32), (b, c)).copy()
  g = sharding.to_global(mesh, {"images": images, "indices": indices, "draw_ids": draw_ids, "class_ids": class_ids})
  args = (params, g["images"], g["indices"], g["draw_ids"], g["class_ids"])
  nfe = b * k * c

  common.reset_peak_memory()
  start = time.perf_counter()
  compiled = kernel.make_kernel(model, spec, mesh).lower(*args).compile()
  compile_s = time.perf_counter() - start
  kernel_errors = np.asarray(jax.device_get(compiled(*args)))  # the warm-up call
  t = {**common.timed(lambda: compiled(*args), warmup=0, repeats=FLAGS.repeats), "warmup": 1}
  kernel_memory = common.peak_memory()
  flops = kernel_flops(model, spec, mesh, args)
  kernel_result = {
    "compile_s": compile_s,
    "time": t,
    "nfe_per_s": nfe / t["median_s"],
    "images_per_s": b / t["median_s"],
    "xla_flops_per_call": flops,
    "xla_flops_per_nfe": flops / nfe if flops else None,
    "xla_flops_compiled_as_reported": common.xla_flops(compiled),
    **common.utilisation(flops, t["median_s"], peaks, dtype),
    "xla_memory_analysis": common.memory_analysis(compiled),
    "peak_memory": kernel_memory,
  }

  lb = min(FLAGS.loop_batch, b)
  loop = Loop(model, spec, params, c, lb)
  loop.load(images, indices)
  common.reset_peak_memory()
  first = loop.first_calls()
  loop_errors = loop.errors(loop.run())  # the warm-up run
  lt = {**common.timed(loop.run, warmup=0, repeats=FLAGS.repeats), "warmup": 1}
  loop_memory = common.peak_memory()
  loop_flops = loop.flops()
  loop_result = {
    "loop_batch": lb,
    **loop.counts(),
    **first,
    "time": lt,
    "nfe_per_s": nfe / lt["median_s"],
    "images_per_s": b / lt["median_s"],
    "xla_flops_per_run": loop_flops,
    **common.utilisation(loop_flops, lt["median_s"], peaks, dtype),
    "peak_memory": loop_memory,
  }
  diff = np.abs(kernel_errors.astype(np.float64) - loop_errors)
  return {
    "model": name,
    "dtype": dtype,
    "image_shape": [size, size, channels],
    "num_classes": c,
    "num_draws": k,
    "batch_size": b,
    "chunk_size": spec.chunk_size,
    "nfe_per_call": nfe,
    "num_params": sum(x.size for x in jax.tree.leaves(params)),
    "kernel": kernel_result,
    "loop": loop_result,
    "speedup_vs_loop": lt["median_s"] / t["median_s"],
    "loop_vs_kernel_errors": {
      "max_abs_diff": float(diff.max()),
      "max_rel_diff": float((diff / np.maximum(np.abs(loop_errors), 1e-12)).max()),
    },
  }


# --- Early stopping on a trained model ---------------------------------------------------------------------------


def early_stop(dtype: str) -> dict:
  """The config's early-stopping rule (`classify.adaptive`) vs the loop at the full budget, on real images and
  trained EMA parameters."""
  from medfusion import modeldir
  from medfusion.classify import aggregate, classifier
  from medfusion.data import pipeline

  if FLAGS.config is None:
    raise app.UsageError("--workdir needs --config: the config the model was trained with")
  config = FLAGS.config.copy_and_resolve_references()
  config.classify.dtype = dtype
  config.classify.num_draws = FLAGS.early_stop_draws or config.classify.num_draws
  config.classify.batch_size = FLAGS.early_stop_batch_size or config.classify.batch_size
  config.classify.prune_stages = ()
  rule = config.classify.adaptive
  if rule == "none":
    raise app.UsageError("--config.classify.adaptive=none: the early-stopping figure needs a rule to time")
  k, b, c = config.classify.num_draws, config.classify.batch_size, config.data.num_classes
  mesh = sharding.make_mesh()
  model = modeldir.load_ema_params(config, FLAGS.workdir)
  params, step = model.params, model.step

  split = pipeline.load_split(config.data, FLAGS.split)
  rows = list(pipeline.eval_batches(split, b, 0, FLAGS.early_stop_images))
  valid = np.concatenate([r["valid"] for r in rows])
  images = np.concatenate([r["image"] for r in rows])[valid]
  indices = np.concatenate([r["index"] for r in rows])[valid]
  labels = np.concatenate([r["label"] for r in rows])[valid]
  n = len(images)
  print(f"[kernel] early stop: {n} images of '{FLAGS.split}', K={k}, B={b}, {dtype}", file=sys.stderr, flush=True)

  def score(adaptive: str):
    cfg = config.copy_and_resolve_references()
    cfg.classify.adaptive = adaptive
    clf = classifier.DiffusionClassifier(cfg, params, mesh)
    r = k if adaptive == "none" else min(cfg.classify.draws_per_round, k)
    rows = np.arange(b) % n  # one full batch (repeating images when there are fewer than b) to compile
    start = time.perf_counter()
    clf.errors(
      images[rows], indices[rows], np.broadcast_to(np.arange(r), (b, r)), np.broadcast_to(np.arange(c), (b, c))
    )
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    tally = clf.score(images, indices)
    seconds = time.perf_counter() - start
    pred = aggregate.vote_prediction(tally.votes, tally.mean_errors)
    return tally, pred, seconds, compile_s

  full, full_pred, full_s, full_compile = score("none")
  early, early_pred, early_s, early_compile = score(rule)

  lb = min(FLAGS.loop_batch, n)
  loop_model = make_denoiser(config, dtype, 0.0)
  loop = Loop(loop_model, kernel.KernelSpec.from_config(config), params, c, lb)
  loop.load(images[:lb], indices[:lb])
  loop.first_calls()
  lt = common.timed(loop.run, warmup=0, repeats=1)
  loop_images_per_s = lb / lt["median_s"]
  early_images_per_s = n / early_s
  return {
    "workdir": os.path.abspath(FLAGS.workdir),
    "checkpoint_step": int(step),
    "split": FLAGS.split,
    "num_images": n,
    "dtype": dtype,
    "num_classes": c,
    "num_draws_full_budget": k,
    "batch_size": b,
    "adaptive": rule,
    "draws_per_round": config.classify.draws_per_round,
    "delta": config.classify.delta,
    "min_draws": config.classify.min_draws,
    "full_budget_vectorized": {
      "seconds": full_s,
      "compile_s": full_compile,
      "images_per_s": n / full_s,
      "mean_nfe_per_image": float(full.nfe.mean()),
      "vote_accuracy": float((full_pred == labels).mean()),
    },
    "early_stop_vectorized": {
      "seconds": early_s,
      "compile_s": early_compile,
      "images_per_s": early_images_per_s,
      "mean_nfe_per_image": float(early.nfe.mean()),
      "mean_draws_per_image": float(early.draws.mean()),
      "vote_accuracy": float((early_pred == labels).mean()),
    },
    "loop_full_budget": {"loop_batch": lb, "images_timed": lb, "time": lt, "images_per_s": loop_images_per_s},
    "speedup_early_stop": early_images_per_s / loop_images_per_s,
    "speedup_full_budget_vs_loop": (n / full_s) / loop_images_per_s,
    "early_stop_agreement": float((early_pred == full_pred).mean()),
  }


# --- Driver ------------------------------------------------------------------------------------------------------


def measure(ynnpack: str | None, emit) -> None:
  """Every requested (model, dtype), then the early-stopping figure (once, under the first YNNPACK setting)."""
  default_models = "small" if jax.default_backend() == "cpu" else "small,paper"
  models = [m for m in common.parse_list(FLAGS.model or default_models) if m != "none"]
  run = common.measure(ynnpack, models, throughput, emit)
  if FLAGS.workdir and (ynnpack is None or ynnpack == common.parse_list(FLAGS.cpu_ynnpack)[0]):
    run["early_stop"] = early_stop(common.parse_list(FLAGS.dtypes)[0])
    emit(run)


def summary(runs: list[dict]) -> list[dict]:
  """One short row per result, for reading at a glance."""
  rows = []
  for run in runs:
    for r in run.get("results", []):
      if "error" in r:
        rows.append({"model": r["model"], "dtype": r["dtype"], "cpu_ynnpack": run.get("cpu_ynnpack"), **r})
        continue
      rows.append(
        {
          "model": r["model"],
          "dtype": r["dtype"],
          "cpu_ynnpack": run.get("cpu_ynnpack"),
          "B_K_C": [r["batch_size"], r["num_draws"], r["num_classes"]],
          "kernel_nfe_per_s": round(r["kernel"]["nfe_per_s"], 1),
          "kernel_images_per_s": round(r["kernel"]["images_per_s"], 2),
          "loop_nfe_per_s": round(r["loop"]["nfe_per_s"], 1),
          "speedup_vs_loop": round(r["speedup_vs_loop"], 2),
          "kernel_fraction_of_peak": r["kernel"]["fraction_of_peak"],
          **{f"kernel_{k}": r["kernel"][k] for k in ("fraction_of_tf32_peak",) if k in r["kernel"]},
          "kernel_compile_s": round(r["kernel"]["compile_s"], 1),
        }
      )
  return rows


def main(argv):
  names = ("model", "num_draws", "batch_size", "num_classes", "chunk_size", "loop_batch", "workdir", "split")
  names += ("early_stop_images", "early_stop_draws", "early_stop_batch_size")

  def finish(payload):
    stops = [r["early_stop"] for r in payload["runs"] if "early_stop" in r]
    payload["early_stop"] = stops[0] if stops else {"skipped": "no --workdir given: needs a trained model"}

  common.main("kernel", argv, {n: FLAGS[n].value for n in names}, measure, summary, finish)


if __name__ == "__main__":
  app.run(main)
