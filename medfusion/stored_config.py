r"""The config a model was trained with, read back from its folder's config.json.

  python -m medfusion.score --workdir=W --split=val --output=OUT   # uses --config=medfusion/stored_config.py:W

`medfusion.score`, `medfusion.sweep` and `medfusion.export` load it when no `--config` is given, so a model trained
with overrides is scored with the same ones; `--config.x=v` still overrides single fields. Fields added to
medfusion after a model was stored are filled in with the values that keep its old behaviour (`ADDED_FIELDS`).
Relative paths in the file (as in the shipped models) are taken relative to the repository root, and
`data.tfds_data_dir` (a cache) is this machine's default.
"""

import json
import os
import pathlib

import ml_collections

from configs import default

REPO = pathlib.Path(__file__).resolve().parent.parent
PLACEHOLDERS = {("classify", "temperature"): float}  # fields whose unset value (null) has a type
# Fields added after models were first stored, with the value that reproduces the older behaviour; a config.json
# written before a field existed gets it from here: every config's (ResNet configs too), then a diffusion config's.
ADDED_FIELDS_EVERY_MODEL = {"data": {"augment": "none"}, "classify": {"positive_class": ""}}
ADDED_FIELDS = {
  "model": {"wavelet": False},
  "diffusion": {"t_focus": 0.0, "class_loss_weight": 0.0, "class_loss_temperature": 0.05, "class_loss_every": 1},
  "train": {"checkpoint_minutes": 10.0},
  "classify": {"prior": "uniform", "min_draws": 0, "weighting": "none", "symmetries": "none"},
  # Stored models predate explanations: every explain field takes its default (configs/default.py), read from there
  # so a field added to the defaults needs no copy here.
  "explain": default.get_config().explain.to_dict(),
}


# Top-level fields added since, with their values for older models (no effect on results).
ADDED_TOP_LEVEL_FIELDS = {"compilation_cache": "~/.cache/medfusion/jax"}


def _from_json(value, path=()):
  if isinstance(value, dict):
    return ml_collections.ConfigDict({k: _from_json(v, (*path, k)) for k, v in value.items()})
  if isinstance(value, list):
    return tuple(_from_json(v, path) for v in value)
  if value is None and path in PLACEHOLDERS:
    return ml_collections.config_dict.placeholder(PLACEHOLDERS[path])
  return value


def get_config(workdir: str):
  """The ConfigDict stored in `workdir/config.json` (a training workdir or an exported model)."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read the model's config ({e}); pass --config=configs/X.py") from None
  for added in (ADDED_FIELDS_EVERY_MODEL, ADDED_FIELDS if "diffusion" in stored else {}):
    for section, fields in added.items():
      for key, value in fields.items():
        stored.setdefault(section, {}).setdefault(key, value)
  for key, value in ADDED_TOP_LEVEL_FIELDS.items():
    stored.setdefault(key, value)
  config = _from_json(stored)
  if "data" in config:
    for field in ("npz", "folder"):
      value = config.data.get(field)
      if value and not os.path.isabs(value):
        config.data[field] = str(REPO / value)
    config.data.tfds_data_dir = str(pathlib.Path.home() / "tensorflow_datasets")
  return config
