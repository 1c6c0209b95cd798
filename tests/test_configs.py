"""Every config in configs/ means what it says: its argument is parsed, it checks, its :smoke variant trains (and,
for diffusion configs, scores) unmodified, and the paper preset has the size README states.

Two smoke variants are trained elsewhere or are another's but for numbers that do not change what runs: `default`
is `pneumoniamnist` but for rates (checked here), and `pneumoniamnist_resnet` trains unmodified in test_baseline.py."""

import glob
import importlib
import json
import os

import fakes
import jax
import numpy as np
import pytest

from configs import default
from medfusion import configcheck, models
from medfusion.data import pipeline
from medfusion.errors import ConfigError
from medfusion.evaluation import evaluators, split_scoring
from medfusion.training import diffusion_trainer, resnet_trainer
from medfusion.training import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
  os.path.splitext(os.path.basename(p))[0]
  for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
  if not p.endswith("__init__.py")
)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
  """Tiny fake CheXpert and ISIC downloads in their official layouts (tests/fakes.py)."""
  root = tmp_path_factory.mktemp("downloads")
  fakes.fake_chexpert(root / "chexpert")
  fakes.fake_isic(root / "isic", "2020")
  return root


def load(name: str, arg: str = "", downloads=None):
  """configs/<name>.py:<arg>; a manually downloaded dataset's manual_dir points at the fake download."""
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  if config.data.source in ("chexpert", "isic") and downloads is not None:
    config.data[config.data.source].manual_dir = str(downloads / config.data.source)
  return config


@pytest.mark.parametrize("name", CONFIGS)
def test_config_checks_and_rejects_unknown_arguments(name, downloads):
  configcheck.check(load(name, "", downloads))
  configcheck.check(load(name, "smoke", downloads))
  with pytest.raises(ValueError, match="smok"):
    load(name, "smok")


TRAINED_ELSEWHERE = ("default", "pneumoniamnist_resnet")


def _flat(tree, prefix=""):
  return {
    k: v
    for key, value in tree.items()
    for k, v in (_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}).items()
  }


def test_default_smoke_is_pneumoniamnist_smoke_but_for_rates():
  """So training the pneumoniamnist smoke variant also runs the default's: the same model, data, loss and
  classifier; only the learning rate and the early-stopping rule's numbers differ."""
  ours, theirs = _flat(load("default", "smoke").to_dict()), _flat(load("pneumoniamnist", "smoke").to_dict())
  differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
  assert differ <= {"train.learning_rate", "classify.delta", "classify.draws_per_round"}, differ


@pytest.mark.parametrize("name", [name for name in CONFIGS if name not in TRAINED_ELSEWHERE])
def test_smoke_config_trains_and_scores_unmodified(name, tmp_path, tfds_dir, downloads):
  config = load(name, "smoke", downloads)
  config.data.tfds_data_dir = tfds_dir  # where tfds builds the data (and finds a download); the rest as shipped
  workdir = str(tmp_path / "run")
  kind = models.model_kind(config)
  state = (diffusion_trainer if kind == "diffusion" else resnet_trainer).train_and_evaluate(config, workdir)
  assert int(state.step) == config.train.steps
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = set().union(*(json.loads(line) for line in f))
  assert config.train.best_metric in logged
  assert os.listdir(os.path.join(workdir, "best"))
  if kind == "diffusion":  # the evaluator's images: at the full budget, the kernel it compiled
    n = config.evals.classify.num_examples
    result = split_scoring.score_split(config, workdir, config.data.eval_split, str(tmp_path / "out"), max_examples=n)
    available = len(pipeline.load_split(config.data, config.data.eval_split).labels)
    assert result["n"] == min(n, available) and result["checkpoint"] == "best"
    assert os.path.exists(tmp_path / "out" / "scores.csv")


def test_paper_preset_is_303m_parameters_built_abstractly():
  config = default.get_config("model=paper")
  configcheck.check(config)
  shapes = jax.eval_shape(lambda: state_lib.init_params(config, state_lib.make_model(config)))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 303_293_441
  assert default.get_config("smoke,model=paper").model.channels == 16  # smoke shrinks any preset


@pytest.mark.parametrize(
  ("field", "value", "fragment"),
  [
    ("model.attention_resolutions", (7,), "no UNet level is 7x7"),
    ("model.norm_groups", 5, "norm_groups"),
    ("diffusion.schedule", "linear", "diffusion.schedule"),
    ("diffusion.loss_weighting", "snr", "loss_weighting"),
    ("classify.error", "mse", "classify.error"),
    ("classify.t_max", 1.5, "t_max"),
    ("classify.adaptive", "maybe", "classify.adaptive"),
    ("classify.draws_per_round", 5, "multiple of classify.draws_per_round"),
    ("classify.min_draws", -1, "classify.min_draws=-1 must be a non-negative integer"),
    ("train.best_metric", "val/accuracy", "best_metric"),
    ("data.fit", "crop", "data.fit"),
    ("data.num_classes", 0, "data.num_classes"),
    ("classify.chunk_size", 1, "classify.chunk_size"),
  ],
)
def test_typed_specs_name_the_bad_field(field, value, fragment):
  config = default.get_config()
  section, key = field.split(".")
  if field == "classify.draws_per_round":
    config.classify.adaptive = "sequential"
  config[section][key] = value
  with pytest.raises(ConfigError, match=fragment):
    configcheck.check(config)


@pytest.mark.parametrize("name", ["dermamnist", "dermamnist_resnet"])
def test_a_positive_class_outside_the_class_names_is_refused_for_either_model_kind(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.classify.positive_class == "mel"
  config.classify.positive_class = "melanoma"
  with pytest.raises(ConfigError, match=r"classify.positive_class='melanoma' is not one of \('akiec'"):
    configcheck.check(config)


def test_evaluator_entries_are_checked():
  config = default.get_config()
  config.evals.classify.num_draws = 0
  with pytest.raises(ConfigError, match="evals.classify.num_draws"):
    configcheck.check(config)
  config = default.get_config()
  config.evals.classify.type = "classification"  # a ResNet evaluator on a diffusion config
  with pytest.raises(ConfigError, match="evaluates a resnet model"):
    configcheck.check(config)
  config = default.get_config()
  config.evals.classify.half = "C"
  with pytest.raises(ConfigError, match=r"evals.classify.half='C' is not one of \('all', 'A', 'B'\)"):
    configcheck.check(config)
  del config.evals.classify["half"]  # configs stored before `half` existed: the whole split
  assert {s.name: s.half for s in evaluators.check(config)} == {"classify": "all", "loss": "A"}


def test_split_half_keeps_images_labels_and_masks_together():
  labels = np.repeat([0, 1], [5, 4]).astype(np.int32)
  images = np.arange(9, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  split = pipeline.Split(images, labels, masks=images + 1)
  assert pipeline.split_half(split, "all") is split
  for half, rows in zip(("A", "B"), pipeline.half_split(labels), strict=True):
    part = pipeline.split_half(split, half)
    np.testing.assert_array_equal(part.labels, labels[rows])
    np.testing.assert_array_equal(part.images[:, 0, 0, 0], rows)
    np.testing.assert_array_equal(part.masks, part.images + 1)


def test_an_evaluator_whose_half_is_empty_uses_the_whole_split_and_says_so(caplog):
  """A smoke test's fake download can have a one-image eval split, whose half A is empty."""
  from medfusion import sharding

  config = default.get_config("smoke")
  one = pipeline.Split(np.zeros((1, 32, 32, 1), np.uint8), np.zeros(1, np.int32), None)  # its one image is in B
  assert len(pipeline.split_half(one, "A").labels) == 0
  built = evaluators.build(config, one, sharding.make_mesh(), predict_fn=None)
  assert [len(e.split.labels) for e in built] == [1, 1]
  assert "config.evals.loss.half=A is empty: the val split has only 1 image(s)" in caplog.text


def test_the_model_kind_is_read_from_model_type():
  config = default.get_config()
  assert models.model_kind(config) == "diffusion"
  config.model.type = "resnet18"  # whatever other sections the config holds
  assert models.model_kind(config) == "resnet"
  config.model.type = "vgg"
  with pytest.raises(ConfigError, match="config.model.type='vgg' is not one of"):
    models.model_kind(config)


def test_compilation_cache_folder(monkeypatch, tmp_path, caplog):
  """JAX_COMPILATION_CACHE_DIR wins over config.compilation_cache; "" turns the cache off; a folder that cannot be
  made is a warning, not an error."""
  from medfusion import runtime

  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert runtime.configure_compilation_cache("~/.cache/medfusion/jax") == str(tmp_path / "env")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  assert runtime.configure_compilation_cache("") == ""
  (tmp_path / "file").write_text("")
  assert runtime.configure_compilation_cache(str(tmp_path / "file" / "jax")) == ""
  assert "cannot be created" in caplog.text
  assert default.get_config().compilation_cache == "~/.cache/medfusion/jax"
