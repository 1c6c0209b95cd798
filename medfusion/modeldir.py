"""A trained model on disk (the diffusion model or the ResNet baseline): a training workdir or an exported folder.

Loading verifies what it loads (the exported files against their checksum manifest, every parameter finite);
export writes a folder that loads the same way; the temperature for calibrated probabilities is stored beside
the parameters, keyed by everything that changes the scale of the errors it was fitted on.

An exported model folder holds `params/` (Orbax: a diffusion model's EMA parameters; a ResNet's parameters and
BatchNorm statistics, {'params', 'batch_stats'}; never optimizer state), `manifest.json` (SHA-256 of every file
under params/), `export.json` (checkpoint step, source), `config.json` and, once fitted, `calibration.json`.
Reading a training workdir restores only those parts of its train state (`checkpoint.restore_parts`).
"""

import dataclasses
import hashlib
import json
import logging
import os

import jax
import numpy as np

from medfusion import checkpoint, models, sharding
from medfusion.errors import UserError
from medfusion.writers import write_json_atomic

log = logging.getLogger("medfusion")

CALIBRATION_FILE = "calibration.json"
EXPORT_META = "export.json"
MANIFEST = "manifest.json"


class ModelError(UserError):
  """A model folder whose files are damaged or whose parameters are not finite."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """What a model applies, and where it came from."""

  params: object  # a diffusion model's EMA parameters; a ResNet's {'params', 'batch_stats'}
  step: int
  which: str  # 'exported', 'best', or 'latest: <why best/ was not used>'
  path: str  # the folder the parameters were read from

  @property
  def description(self) -> str:
    return f"checkpoint {self.path} (step {self.step}, {self.which})"


def is_exported(workdir: str) -> bool:
  return os.path.isdir(os.path.join(workdir, checkpoint.EXPORT_DIR))


def load(config, workdir: str) -> LoadedModel:
  """The model of `config` in an exported folder (`workdir/params`), else the workdir's best checkpoint, else its
  latest: a diffusion model's EMA parameters or a ResNet's variables. The manifest (exported models) and
  finiteness are checked, and which checkpoint is logged."""
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} does not exist")
  kind = models.model_kind(config)
  model = models.make_model(config)
  variables = sharding.abstract(lambda: models.init_variables(config, model), sharding.replicated(sharding.make_mesh()))
  abstract = variables["params"] if kind == "diffusion" else variables
  if is_exported(workdir):
    path = os.path.join(os.path.abspath(workdir), checkpoint.EXPORT_DIR)
    _verify_manifest(workdir)
    with open(os.path.join(workdir, EXPORT_META)) as f:
      step = int(json.load(f)["checkpoint_step"])
    loaded = LoadedModel(checkpoint.load_exported_params(workdir, abstract), step, "exported", path)
  else:
    # The train state's fields that inference reads: the diffusion trainer's `ema_params`; the ResNet trainer's
    # `params` and `batch_stats` (the same names as the variables).
    parts, step, which = checkpoint.restore_parts(
      workdir, {"ema_params": abstract} if kind == "diffusion" else abstract
    )
    params = parts["ema_params"] if kind == "diffusion" else parts
    sub = "best" if which == "best" else "checkpoints"
    loaded = LoadedModel(params, int(step), which, os.path.join(os.path.abspath(workdir), sub, str(step)))
  _check_finite(loaded)
  log.info("Using %s", loaded.description)
  return loaded


def load_ema_params(config, workdir: str) -> LoadedModel:
  """`load` of a diffusion model: its EMA parameters."""
  if models.model_kind(config) != "diffusion":
    raise UserError(f"{workdir} holds a {config.model.type} classifier, not a diffusion model")
  return load(config, workdir)


def _check_finite(loaded: LoadedModel) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(loaded.params)[0]:
    if not np.all(np.isfinite(np.asarray(leaf))):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      raise ModelError(f"{loaded.description}: parameter {name} holds NaN or infinite values")


def write_manifest(model_dir: str) -> None:
  """`model_dir/manifest.json`: the SHA-256 of every file under `model_dir/params`."""
  digests = _file_digests(os.path.join(model_dir, checkpoint.EXPORT_DIR))
  write_json_atomic(os.path.join(model_dir, MANIFEST), {"sha256": digests})


def _file_digests(directory: str) -> dict[str, str]:
  """SHA-256 of every file under `directory`, by path relative to its parent."""
  parent = os.path.dirname(os.path.abspath(directory))
  digests = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digests[os.path.relpath(path, parent)] = hashlib.file_digest(f, "sha256").hexdigest()
  return dict(sorted(digests.items()))


def _verify_manifest(workdir: str) -> None:
  manifest = os.path.join(workdir, MANIFEST)
  if not os.path.exists(manifest):
    log.warning("%s has no %s: its parameter files cannot be verified (re-export it)", workdir, MANIFEST)
    return
  with open(manifest) as f:
    expected = json.load(f)["sha256"]
  found = _file_digests(os.path.join(workdir, checkpoint.EXPORT_DIR))
  for name in sorted(set(expected) | set(found)):
    if expected.get(name) != found.get(name):
      state = "is missing" if name not in found else "is not in the manifest" if name not in expected else "changed"
      raise ModelError(f"{os.path.join(workdir, name)} {state} since export (checked against {manifest})")


def export(config, workdir: str, output: str) -> int:
  """Copies the workdir's best model (EMA parameters; a ResNet's parameters and BatchNorm statistics), calibration
  and config into `output` (a shippable model)."""
  loaded = load(config, workdir)
  os.makedirs(output, exist_ok=True)
  checkpoint.export_params(loaded.params, output)
  write_manifest(output)
  write_json_atomic(os.path.join(output, EXPORT_META), {"checkpoint_step": loaded.step, "source_workdir": workdir})
  write_json_atomic(os.path.join(output, "config.json"), json.loads(config.to_json_best_effort()))
  calibration = os.path.join(workdir, CALIBRATION_FILE)
  if os.path.exists(calibration):
    with open(calibration) as f:
      write_json_atomic(os.path.join(output, CALIBRATION_FILE), json.load(f))
  return loaded.step


# --- Calibration ---------------------------------------------------------------------------------------------------


def calibration_key(config, step: int) -> dict:
  """What a fitted temperature depends on: the checkpoint and every setting that changes the error scale, class
  pruning included (a pruned class keeps a placed mean error); a ResNet: the checkpoint alone."""
  if models.model_kind(config) == "resnet":
    return {"checkpoint_step": int(step)}
  c = config.classify
  return {
    "checkpoint_step": int(step),
    "error": c.error,
    "t_min": float(c.t_min),
    "t_max": float(c.t_max),
    "num_draws": int(c.num_draws),
    "timesteps": c.timesteps,
    **({"symmetries": c.symmetries} if c.symmetries != "none" else {}),  # older fits keep their key
    **({"prune_stages": [list(stage) for stage in c.prune_stages]} if c.prune_stages else {}),
  }


def _read_fits(workdir: str, filename: str = CALIBRATION_FILE) -> list[dict]:
  """The keyed fits stored in `workdir/filename` (calibration.json, weighting.json); none when it is absent."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f).get("fits", [])


def stored_temperature(workdir: str, key: dict) -> float | None:
  """The temperature fitted with exactly these settings, if one was stored."""
  return next((float(f["temperature"]) for f in _read_fits(workdir) if f["key"] == key), None)


def store_temperature(workdir: str, key: dict, temperature: float, split: str, n: int) -> None:
  """Adds (or replaces) the fit for `key` in `workdir/calibration.json`."""
  fits = [f for f in _read_fits(workdir) if f["key"] != key]
  fits.append({"key": key, "temperature": temperature, "fitted_on": split, "n": int(n)})
  write_json_atomic(os.path.join(workdir, CALIBRATION_FILE), {"fits": fits})


def temperature(config, workdir: str, step: int) -> tuple[float | None, str]:
  """(T, where it came from) for scoring: an explicit `config.classify.temperature` always wins; else the fit
  stored for this checkpoint and these settings; else None (the caller fits it on the eval split or falls back)."""
  if models.model_kind(config) == "diffusion" and config.classify.temperature is not None:
    return float(config.classify.temperature), "config.classify.temperature"
  stored = stored_temperature(workdir, calibration_key(config, step))
  if stored is not None:
    return stored, f"fitted ({os.path.join(workdir, CALIBRATION_FILE)})"
  return None, "none stored"


# --- Timestep weighting (medfusion/classify/weighting.py) -----------------------------------------------------------

WEIGHTING_FILE = "weighting.json"


def weighting_key(config, step: int) -> dict:
  """What a fitted timestep weighting depends on: everything the temperature does, and its form."""
  return calibration_key(config, step) | {"weighting": config.classify.weighting}


def stored_weighting(workdir: str, key: dict) -> dict | None:
  """The weighting (`TimestepWeighting.to_json()`) fitted with exactly these settings, if one was stored."""
  return next((f["weighting"] for f in _read_fits(workdir, WEIGHTING_FILE) if f["key"] == key), None)


def store_weighting(workdir: str, key: dict, weighting: dict, fitted_on: str, n: int) -> None:
  """Adds (or replaces) the weighting for `key` in `workdir/weighting.json`; `fitted_on` says which draws."""
  fits = [f for f in _read_fits(workdir, WEIGHTING_FILE) if f["key"] != key]
  fits.append({"key": key, "weighting": weighting, "fitted_on": fitted_on, "n": int(n)})
  write_json_atomic(os.path.join(workdir, WEIGHTING_FILE), {"fits": fits})
