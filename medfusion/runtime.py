"""Process-wide settings: the CPU's YNNPACK choice (before JAX starts), the persistent compilation cache,
`jax.distributed` for multi-process runs, and compilation of run-once functions."""

import logging
import os

import jax

from medfusion.errors import UserError

log = logging.getLogger("medfusion")

# XLA:CPU hands convolutions, matmuls and reductions to YNNPACK by default; on the 2-core reference CPU
# that path used about one core (see README, Performance). Values of `config.cpu_ynnpack`:
YNNPACK_FUSION_TYPES = {
  "default": None,  # leave XLA's default
  "no_convolutions": "-individual_convolution",  # YNNPACK off for convolutions only
  "off": "",  # YNNPACK off entirely (Eigen)
}


def configure_cpu(ynnpack: str) -> None:
  """Sets XLA's YNNPACK fusion flag unless XLA_FLAGS already sets it; call before the first JAX op."""
  if ynnpack not in YNNPACK_FUSION_TYPES:
    raise ValueError(f"config.cpu_ynnpack='{ynnpack}' is not one of {tuple(YNNPACK_FUSION_TYPES)}")
  value = YNNPACK_FUSION_TYPES[ynnpack]
  flags = os.environ.get("XLA_FLAGS", "")
  if value is None or "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type={value}".strip()


# Programs that compile faster than this are not worth a cache file (JAX's own default is 1 s, which skips the
# small programs every command compiles: parameter placement, gathers, the scoring of a short split).
CACHE_MIN_COMPILE_SECONDS = 0.1


def configure_compilation_cache(folder: str) -> str:
  """Keeps compiled XLA programs in `folder` (`config.compilation_cache`; '~' is expanded, '' turns it off) so the
  next command with the same shapes loads them instead of compiling again. JAX_COMPILATION_CACHE_DIR, when set,
  wins. Returns the folder in use ('' for none); a folder that cannot be created is a warning, not an error."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not folder:
    return ""
  folder = os.path.expanduser(folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    log.warning("config.compilation_cache=%s cannot be created (%s); compiling without a cache", folder, e)
    return ""
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
  return folder


# JAX's events for the three stages of compiling a program (the last includes loading it from the cache).
_COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
  """Seconds this process spends tracing, lowering and compiling (or loading cached) programs from the clock's
  creation on: what a report separates from computation."""

  def __init__(self):
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)

  def _on_duration(self, event: str, seconds: float, **kwargs) -> None:
    if event in _COMPILE_EVENTS:
      self.seconds += seconds


def run_once(fn, out_shardings=None):
  """Calls `fn()` jitted at XLA optimisation level 0: for functions that run once (parameter and state
  initialisation), where the CPU compiles their many random initialisers several times faster so; values agree to
  float32 rounding."""
  return jax.jit(fn, out_shardings=out_shardings, compiler_options={"xla_backend_optimization_level": 0})()


# What jax.distributed.initialize() needs from the environment, by launcher. JAX_COORDINATOR_ADDRESS is the one JAX
# reads itself; medfusion adds JAX_NUM_PROCESSES and JAX_PROCESS_ID so any launcher (or a test) can start processes.
# The SLURM and Open MPI variables are those JAX's own cluster detection reads (srun and mpirun set them per task;
# an sbatch script outside srun has no SLURM_STEP_NODELIST); SLURM_STEP_NUM_TASKS, where srun sets it, counts the
# tasks of this step (an interactive step in a larger allocation is one). TPU_WORKER_HOSTNAMES and
# TPU_PROCESS_ADDRESSES are set on TPU pods under GKE. A GCE TPU pod slice says so only in its metadata server,
# which JAX queries when --distributed is given (launch/tpu_pod.sh does).
_JAX_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OMPI_VARS = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
_TPU_HOSTS_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


def launcher_processes(env=None) -> tuple[str, int]:
  """(launcher, number of processes) that the environment (default: os.environ) describes; ('', 1) for a plain
  single process."""
  env = os.environ if env is None else env
  if all(v in env for v in _JAX_VARS):
    return "JAX_COORDINATOR_ADDRESS", int(env["JAX_NUM_PROCESSES"])
  if all(v in env for v in _SLURM_VARS):
    return "SLURM", int(env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]))
  if all(v in env for v in _OMPI_VARS):
    return "Open MPI", int(env["OMPI_COMM_WORLD_SIZE"])
  hosts = next((env[v] for v in _TPU_HOSTS_VARS if env.get(v)), "")
  if hosts:
    return "TPU pod", len(hosts.split(","))
  return "", 1


def maybe_initialize_distributed(force: bool) -> bool:
  """Calls `jax.distributed.initialize()` when `force` (--distributed) or when the environment starts several
  processes (`launcher_processes`); a no-op for a plain single process or when already initialised. Call before
  the first JAX operation. Returns whether this process is part of a distributed run."""
  if jax.distributed.is_initialized():
    return True
  launcher, processes = launcher_processes()
  if processes < 2 and not force:
    return False
  args = {}
  if launcher == "JAX_COORDINATOR_ADDRESS":
    env = os.environ
    args = {
      "coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
      "num_processes": processes,
      "process_id": int(env["JAX_PROCESS_ID"]),
    }
  try:
    jax.distributed.initialize(**args)
  except ValueError as e:  # --distributed with nothing that names the coordinator
    raise UserError(
      f"jax.distributed.initialize(): {str(e).rstrip('.')}; start under srun, mpirun or on a TPU pod, or set "
      f"{', '.join(_JAX_VARS)}"
    ) from None
  log.info("jax.distributed: process %d of %d (%s)", jax.process_index(), jax.process_count(), launcher or "JAX")
  return True
