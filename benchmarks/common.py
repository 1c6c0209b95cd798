"""What the benchmarks share: run description, JSON output, timing, FLOP counts, peaks and memory.

Nothing here starts JAX's backend at import time, so a benchmark can still set process-wide XLA flags
(`medfusion.runtime.configure_cpu`) before its first JAX operation. `main` is the driver both benchmarks run:
one subprocess per `--cpu_ynnpack` setting on CPU, one in-process run elsewhere, the JSON saved after every result.
"""

import datetime
import json
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from medfusion import runtime, writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
YNNPACK_FLAG = "--xla_cpu_experimental_ynn_fusion_type"

FLAGS = flags.FLAGS
flags.DEFINE_string("dtypes", "float32,bfloat16", "Comma-separated compute dtypes.")
flags.DEFINE_integer("repeats", 5, "Timed repeats of each measurement (the median is reported).", lower_bound=1)
flags.DEFINE_integer("matmul_repeats", 5, "Timed repeats of the matmul that measures the CPU peak.", lower_bound=1)
flags.DEFINE_string("cpu_ynnpack", "default,off", "CPU only: comma-separated config.cpu_ynnpack settings to compare.")
flags.DEFINE_string("out_dir", "", "Folder for the JSON file. Default: benchmarks/results.")
flags.DEFINE_string("tag", "", "Appended to the JSON file's name, so runs of one day do not replace each other.")
flags.DEFINE_string("note", "", "Free text stored in the JSON (for example, what else was running).")
flags.DEFINE_string("child_ynnpack", "", "Internal: run as the subprocess for this cpu_ynnpack setting.")
flags.DEFINE_string("child_output", "", "Internal: where that subprocess writes its records.")

# Vendor dense (no sparsity) peaks in FLOP/s, matched against `device_kind` in this order (first match wins).
# NVIDIA's datasheets quote tensor-core figures "with sparsity"; the dense figure is half of that.
#  - H100 SXM5 / H200 SXM: NVIDIA H100 Tensor Core GPU datasheet and H200 Tensor Core GPU datasheet (the H200 has
#    the H100's compute): FP32 67 TFLOP/s (CUDA cores), TF32 tensor 989 (sparse) -> 494.7 dense, BF16 1,979
#    (sparse) -> 989.4 dense.
#  - H100 PCIe: FP32 51, TF32 756 (sparse) -> 378, BF16 1,513 (sparse) -> 756.
#  - H100 NVL / H200 NVL: FP32 60, TF32 835 (sparse) -> 417.5, BF16 1,671 (sparse) -> 835.5.
#  - A100 (SXM and PCIe): NVIDIA A100 datasheet: FP32 19.5, TF32 156 dense, BF16 312 dense.
#  - TPU: Google Cloud TPU system architecture pages, bf16 per chip: v4 275, v5e 197, v5p 459, v6e (Trillium) 918.
#    TPUs publish no fp32 figure (fp32 matmuls run as several bf16 passes).
# On NVIDIA GPUs JAX computes float32 matmuls and convolutions with TF32 tensor cores by default
# (docs.jax.dev "Matmul precision"), so float32 results report both the fp32 and the tf32 fraction.
_T = 1e12
VENDOR_PEAKS = (
  ("H100 PCIe", {"float32": 51 * _T, "tf32": 378 * _T, "bfloat16": 756 * _T}),
  ("H100 NVL", {"float32": 60 * _T, "tf32": 417.5 * _T, "bfloat16": 835.5 * _T}),
  ("H200 NVL", {"float32": 60 * _T, "tf32": 417.5 * _T, "bfloat16": 835.5 * _T}),
  ("H100", {"float32": 67 * _T, "tf32": 494.7 * _T, "bfloat16": 989.4 * _T}),
  ("H200", {"float32": 67 * _T, "tf32": 494.7 * _T, "bfloat16": 989.4 * _T}),
  ("A100", {"float32": 19.5 * _T, "tf32": 156 * _T, "bfloat16": 312 * _T}),
  ("TPU v4", {"bfloat16": 275 * _T}),
  ("TPU v5 lite", {"bfloat16": 197 * _T}),
  ("TPU v5e", {"bfloat16": 197 * _T}),
  ("TPU v5p", {"bfloat16": 459 * _T}),
  ("TPU v5", {"bfloat16": 459 * _T}),
  ("TPU v6 lite", {"bfloat16": 918 * _T}),
  ("TPU v6e", {"bfloat16": 918 * _T}),
)
VENDOR_PEAK_SOURCE = (
  "vendor datasheet dense peak (NVIDIA H100/H200/A100 datasheets, sparse figures halved; Google Cloud TPU docs)"
)


def quiet_logging() -> None:
  """Warnings and errors only from absl, Orbax, TensorFlow and JAX internals (as medfusion.cli.setup does)."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_list(value: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c']."""
  return [s.strip() for s in (value or "").split(",") if s.strip()]


# --- Run description ---------------------------------------------------------------------------------------------


def utc_now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


def git_commit() -> dict:
  """HEAD's commit and whether the tree has uncommitted changes (None when git is unavailable)."""

  def git(*args):
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None

  try:
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict:
  import flax
  import jaxlib
  import optax

  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
  }


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def device_description() -> dict:
  """The devices JAX uses (starts the backend) and the host they sit in."""
  devices = jax.devices()
  d = devices[0]
  return {
    "platform": d.platform,
    "device_kind": d.device_kind,
    "device_count": len(devices),
    "process_count": jax.process_count(),
    "host_cpu": _cpu_model(),
    "host_cpu_count": os.cpu_count(),
    "host_cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "host_load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None)),
  }


def header(name: str, settings: dict, note: str) -> dict:
  """The fields every result file starts with."""
  now = utc_now()
  return {
    "benchmark": name,
    "date_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    "command": shlex.join([os.path.basename(sys.executable), "-m", f"benchmarks.{name}", *sys.argv[1:]]),
    "git": git_commit(),
    "versions": versions(),
    "device": device_description(),
    "settings": settings,
    "note": note,
    "complete": False,
  }


def result_path(name: str, device_kind: str, out_dir: str = "", tag: str = "") -> str:
  """`<out_dir>/<name>_<device_kind>_<YYYY-MM-DD>[_<tag>].json` (UTC date; a same-day rerun replaces the file)."""
  kind = re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-") or "unknown"
  suffix = "_" + re.sub(r"[^A-Za-z0-9._-]+", "-", tag) if tag else ""
  return os.path.join(out_dir or RESULTS_DIR, f"{name}_{kind}_{utc_now():%Y-%m-%d}{suffix}.json")


def write_json(path: str, payload: dict) -> None:
  """Writes atomically (writers.write_atomically), so a killed run leaves the last complete write."""
  writers.write_text_atomic(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


# --- Per-YNNPACK-setting subprocesses (XLA flags are process-wide) --------------------------------------------------


def child_env(ynnpack: str) -> dict:
  """This process's environment with XLA_FLAGS set for one `config.cpu_ynnpack` value and nothing else changed."""
  if ynnpack not in runtime.YNNPACK_FUSION_TYPES:
    raise ValueError(f"--cpu_ynnpack value '{ynnpack}' is not one of {tuple(runtime.YNNPACK_FUSION_TYPES)}")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(YNNPACK_FLAG)]
  value = runtime.YNNPACK_FUSION_TYPES[ynnpack]
  if value is not None:
    flags.append(f"{YNNPACK_FLAG}={value}")
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def run_child(module: str, ynnpack: str, argv: list[str]) -> list[dict]:
  """Runs `python -m module argv` under one YNNPACK setting; returns the records it wrote (or one error record)."""
  fd, path = tempfile.mkstemp(suffix=".json")
  os.close(fd)
  cmd = [sys.executable, "-m", module, *argv, f"--child_ynnpack={ynnpack}", f"--child_output={path}"]
  print(f"[{module}] cpu_ynnpack={ynnpack}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, cwd=os.getcwd(), env=child_env(ynnpack))
  try:
    with open(path) as f:
      records = json.load(f)
  except (OSError, ValueError):
    records = []
  finally:
    os.unlink(path)
  if proc.returncode != 0:
    records.append({"cpu_ynnpack": ynnpack, "error": f"subprocess exited with status {proc.returncode}"})
  return records


# --- Timing, FLOPs, peaks, memory --------------------------------------------------------------------------------


def timed(fn, warmup: int = 1, repeats: int = 5) -> dict:
  """Runs fn() `warmup` times, then `repeats` timed times, each waited for with block_until_ready; seconds."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return {
    "median_s": statistics.median(times),
    "min_s": min(times),
    "max_s": max(times),
    "times_s": times,
    "warmup": warmup,
    "repeats": repeats,
  }


def xla_flops(lowered_or_compiled) -> float | None:
  """FLOPs from XLA's HLO cost analysis of a `Lowered` or `Compiled`; None where the backend gives none.

  In jax 0.10 `cost_analysis()` returns a dict; older versions returned a list with one dict per computation.
  Where a `Lowered` gives no analysis (jax 0.11 on GPU gave none), its compiled executable's is used.
  XLA counts the body of a while loop (`lax.map`, `lax.scan`) once, whatever its trip count.
  """
  flops = _flops(lowered_or_compiled)
  if flops is None and hasattr(lowered_or_compiled, "compile"):
    flops = _flops(lowered_or_compiled.compile())
  return flops


def _flops(lowered_or_compiled) -> float | None:
  try:
    analysis = lowered_or_compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return None
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 else None


def memory_analysis(compiled) -> dict | None:
  """XLA's planned buffer sizes (bytes) for one executable: arguments, outputs, temporaries, generated code."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    return None
  if stats is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")
  out = {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}
  code = getattr(stats, "generated_code_size_in_bytes", None)
  if code is not None:
    out["generated_code_size_in_bytes"] = int(code)
  return out


def matmul_flops(dtype: str, n: int, repeats: int = 5) -> dict:
  """Achieved FLOP/s of an n x n x n matmul in `dtype` (2 n^3 FLOPs per product; median of repeats)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(jnp.matmul)
  t = timed(lambda: f(a, b), warmup=2, repeats=repeats)
  return {"n": n, "dtype": dtype, "median_s": t["median_s"], "flops_per_s": 2 * n**3 / t["median_s"]}


def peaks(dtypes: list[str], repeats: int = 5) -> dict:
  """The peak FLOP/s each dtype's utilisation is measured against, with where it comes from.

  CPU: a large float32 matmul measured in this process (under its XLA flags) is the peak for every dtype; a
  matmul in each other dtype is measured too, for reference. GPU/TPU: the vendor's dense peak per dtype
  (`VENDOR_PEAKS`), with a matmul measured here for reference; an unknown accelerator falls back to the matmul.
  """
  d = jax.devices()[0]
  n = 2048 if d.platform == "cpu" else 8192
  measured = {dt: matmul_flops(dt, n, repeats) for dt in dict.fromkeys(["float32", *dtypes])}
  out = {"measured_matmul": measured}
  if d.platform == "cpu":
    out["peak_flops_per_s"] = {dt: measured["float32"]["flops_per_s"] for dt in dtypes}
    out["source"] = f"measured here: median {n}x{n} float32 matmul (jnp.matmul under jit), used for every dtype"
    return out
  table = next((p for key, p in VENDOR_PEAKS if key.lower() in d.device_kind.lower()), None)
  if table is None:
    out["peak_flops_per_s"] = {dt: measured[dt]["flops_per_s"] for dt in dtypes}
    out["source"] = f"'{d.device_kind}' is not in the vendor table: measured {n}^3 matmul per dtype"
    return out
  out["peak_flops_per_s"] = {dt: table.get(dt, measured[dt]["flops_per_s"]) for dt in dtypes}
  if "tf32" in table:
    out["tf32_peak_flops_per_s"] = table["tf32"]
  out["source"] = f"{VENDOR_PEAK_SOURCE}; float32 = non-tensor-core FP32"
  return out


def utilisation(flops: float | None, seconds: float, peak_info: dict, dtype: str) -> dict:
  """Achieved FLOP/s and its fraction of the dtype's peak (and of the TF32 peak for float32 on NVIDIA GPUs)."""
  if not flops:
    return {"achieved_flops_per_s": None, "fraction_of_peak": None}
  achieved = flops / seconds
  out = {"achieved_flops_per_s": achieved, "fraction_of_peak": achieved / peak_info["peak_flops_per_s"][dtype]}
  if dtype == "float32" and "tf32_peak_flops_per_s" in peak_info:
    out["fraction_of_tf32_peak"] = achieved / peak_info["tf32_peak_flops_per_s"]
  return out


def reset_peak_memory() -> None:
  """Starts a new peak-memory window where the platform allows it (host: Linux clear_refs; GPU/TPU: cannot)."""
  if jax.devices()[0].platform == "cpu":
    try:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set size
    except OSError:
      pass


def peak_memory() -> dict:
  """Peak memory: host resident set (CPU) or the device allocator's peak in use (GPU/TPU), in bytes."""
  d = jax.devices()[0]
  if d.platform != "cpu":
    stats = d.memory_stats() or {}
    return {
      "kind": "device_peak_bytes_in_use",
      "bytes": stats.get("peak_bytes_in_use"),
      "bytes_limit": stats.get("bytes_limit"),
      "scope": "since the process started (JAX cannot reset the device peak)",
    }
  try:
    with open("/proc/self/status") as f:
      status = dict(line.split(":", 1) for line in f if ":" in line)
    return {
      "kind": "host_peak_rss",
      "bytes": int(status["VmHWM"].split()[0]) * 1024,
      "scope": "since the last reset (Linux /proc/self/clear_refs), this phase only",
    }
  except (OSError, KeyError, ValueError):
    import resource

    return {
      "kind": "host_peak_rss",
      "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "scope": "since the process started (getrusage)",
    }


# --- The driver ----------------------------------------------------------------------------------------------------


def measure(ynnpack: str | None, models: list[str], throughput, emit) -> dict:
  """`throughput(model, dtype, peaks)` for every model and dtype in this process; `emit(run)` after each result.
  One failed configuration (say, out of memory) is recorded as an error and does not lose the rest."""
  dtypes = parse_list(FLAGS.dtypes)
  run = {
    "cpu_ynnpack": ynnpack,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "peaks": peaks(dtypes, FLAGS.matmul_repeats),
    "results": [],
  }
  emit(run)
  for name in models:
    for dtype in dtypes:
      try:
        run["results"].append(throughput(name, dtype, run["peaks"]))
      except Exception as e:  # noqa: BLE001
        run["results"].append({"model": name, "dtype": dtype, "error": f"{type(e).__name__}: {e}"})
      emit(run)
  return run


def main(name: str, argv, settings: dict, measure_fn, summary_fn, finish=None) -> None:
  """Runs benchmark `name`: `measure_fn(ynnpack, emit)` once per --cpu_ynnpack setting in its own subprocess on CPU
  (XLA flags are process-wide), in process elsewhere; writes benchmarks/results/<name>_<device>_<date>[_tag].json
  after every result with `summary_fn(runs)` and `finish(payload)` applied."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_logging()
  if FLAGS.child_ynnpack:  # a per-setting subprocess: XLA_FLAGS was set by the parent
    runtime.configure_cpu(FLAGS.child_ynnpack)
    measure_fn(FLAGS.child_ynnpack, lambda run: write_json(FLAGS.child_output, [run]))
    return
  settings = {**settings, **{n: FLAGS[n].value for n in ("dtypes", "repeats", "cpu_ynnpack", "tag")}}
  payload = header(name, settings, FLAGS.note)
  path = result_path(name, payload["device"]["device_kind"], FLAGS.out_dir, FLAGS.tag)
  payload["runs"] = []

  def save():
    payload["summary"] = summary_fn(payload["runs"])
    if finish is not None:
      finish(payload)
    write_json(path, payload)

  if jax.default_backend() == "cpu":
    child_argv = [a for a in sys.argv[1:] if not a.startswith("--child_")]
    for ynnpack in parse_list(FLAGS.cpu_ynnpack):
      payload["runs"].extend(run_child(f"benchmarks.{name}", ynnpack, child_argv))
      save()
  else:
    payload["runs"].append({})

    def emit(run):
      payload["runs"][-1] = run
      save()

    measure_fn(None, emit)
  payload["complete"] = True
  save()
  print(json.dumps(payload["summary"], indent=1))
  print(f"wrote {path}", file=sys.stderr)
