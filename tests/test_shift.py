"""medfusion.shift end to end on the shipped PneumoniaMNIST model and its ResNet-18 judge (4 images, 2 draws), its
resume, its summary arithmetic and its one-line errors."""

import copy
import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_python

from medfusion import stored_config
from medfusion.errors import UserError
from medfusion.evaluation import predictors, shift

MODEL = os.path.join(ROOT, "pretrained", "pneumoniamnist")
JUDGE = os.path.join(MODEL, "judge")


def _config():
  config = stored_config.get_config(MODEL)
  config.classify.num_draws = 2
  config.classify.draws_per_round = 1
  config.classify.batch_size = 4
  return config


def test_shift_scores_both_models_on_the_same_images_and_resumes(tmp_path, monkeypatch):
  out = str(tmp_path / "shift")
  args = dict(max_examples=4, corruption_list="brightness_down,gaussian_noise", severity_list="1,5", compare=JUDGE)
  result = shift.run(_config(), MODEL, "val", out, store_errors=True, **args)

  cells = ["clean", "resampled", "brightness_down_1", "brightness_down_5", "gaussian_noise_1", "gaussian_noise_5"]
  assert result["n"] == 4 and result["corruption_set"] == "pneumoniamnist"
  assert set(result["results"]["model"]) == set(cells) == set(result["results"]["reference"])
  for cell in cells:
    for agg in ("vote", "mean"):
      row = result["results"]["model"][cell][agg]
      assert set(shift.REPORTED) <= set(row) and row["nfe_per_image"] == 4.0  # 2 classes x 2 draws, full budget
    assert result["results"]["reference"][cell]["softmax"]["nfe_per_image"] == 1.0
  stored = np.load(os.path.join(out, "cells", "model", "brightness_down_5.npz"))
  assert stored["errors"].shape == (4, 2, 2) and stored["t"].shape == (4, 2)
  # the errors reproduce the stored votes, so stopping rules can be replayed per cell
  full_budget = predictors.totals_from_errors(stored["errors"], stored["index"], stored["label"])
  np.testing.assert_array_equal(full_budget.votes, stored["votes"])
  assert os.path.getsize(os.path.join(out, "shift.png")) > 0

  summary = result["summary"]["model"]["vote"]
  scores = result["results"]["model"]
  expected = np.mean([1 - scores[f"brightness_down_{s}"]["vote"]["balanced_accuracy"] for s in (1, 5)])
  assert summary["balanced_error"]["brightness_down"] == pytest.approx(expected)
  assert summary["relative_balanced_error"]["brightness_down"] == pytest.approx(
    expected - summary["clean_balanced_error"]
  )
  reference = result["summary"]["reference"]["softmax"]["balanced_error"]["brightness_down"]
  if reference > 0:
    assert summary["normalised_balanced_error"]["brightness_down"] == pytest.approx(expected / reference)

  # a rerun scores nothing and writes the same result
  def refuse(*_):
    raise AssertionError("a finished cell was scored again")

  monkeypatch.setattr(shift.ModelUnderTest, "score", refuse)
  again = shift.run(_config(), MODEL, "val", out, store_errors=True, **args)
  assert json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)
  with pytest.raises(UserError, match="other settings"):  # other classify settings, same folder
    config = _config()
    config.classify.num_draws = 4
    shift.run(config, MODEL, "val", out, store_errors=True, **args)

  # docs/shift_stopping.py replays stopping rules on the stored cells; at K = 2 in rounds of 2 none can stop early
  monkeypatch.syspath_prepend(os.path.join(ROOT, "docs"))
  import shift_stopping

  replayed = shift_stopping.replay_cells(*shift_stopping.load_cells(os.path.join(out, "cells", "model")), orders=2)
  gathered = str(tmp_path / "gathered.npz")  # the one-file form docs/shift/ keeps loads as the folder does
  shift_stopping.gather(os.path.join(out, "cells", "model"), gathered)
  (folder_cells, folder_labels), (npz_cells, npz_labels) = (
    shift_stopping.load_cells(os.path.join(out, "cells", "model")),
    shift_stopping.load_cells(gathered),
  )
  assert sorted(npz_cells) == sorted(folder_cells) and np.array_equal(npz_labels, folder_labels)
  assert all(np.array_equal(npz_cells[c], folder_cells[c]) for c in folder_cells)
  with np.load(gathered) as f:
    assert f["clean/t"].shape == f["clean/errors"].shape[::2]  # [N, K] beside [N, C, K]
  monkeypatch.setattr("sys.argv", ["shift_stopping.py", gathered, "--gather", str(tmp_path / "again.npz")])
  with pytest.raises(SystemExit, match="--gather needs a shift run's cells/model folder"):
    shift_stopping.main()
  assert set(replayed["cells"]) == set(cells)
  for rule in shift_stopping.RULES:
    assert set(replayed["summary"][rule]) == {"clean", "resampled", "color 1", "color 5", "noise 1", "noise 5"}
    for cell in cells:
      row = replayed["cells"][cell][rule]
      assert row["nfe_per_image"] == row["full_nfe_per_image"] == 4.0
      assert row["vote_auc_change"] in (0.0, None) and row["mean_aurc_change"] in (1.0, None)
  with pytest.raises(SystemExit, match="holds no draws"):  # the ResNet's cells
    shift_stopping.load_cells(os.path.join(out, "cells", "reference"))
  with pytest.raises(SystemExit, match="does not exist"):
    shift_stopping.load_cells(os.path.join(out, "cells", "absent"))

  # docs/shift_compare.py compares two runs on the same images cell by cell, and per family and severity
  import shift_compare

  full = shift_compare.load(os.path.join(out, "shift.json"))
  other = copy.deepcopy(full)
  other["results"]["model"]["gaussian_noise_5"]["vote"]["accuracy"] -= 0.25
  compared = shift_compare.compare_runs(full, other)
  assert set(compared["cells"]) == set(cells) and compared["summary"]["noise 5"]["cells"] == 1
  assert compared["cells"]["gaussian_noise_5"]["vote_accuracy_change"] == pytest.approx(-0.25)
  assert compared["summary"]["noise 5"]["vote_accuracy_change"] == pytest.approx(-0.25)
  assert compared["summary"]["noise 1"]["vote_accuracy_change"] == 0.0
  assert all(row["mean_aurc_change"] in (1.0, None) for row in compared["cells"].values())
  other["n"] = 5
  with pytest.raises(SystemExit, match="differ in n"):
    shift_compare.compare_runs(full, other)
  del other["results"]["reference"]
  with pytest.raises(SystemExit, match="no 'reference' results"):
    shift_compare.compare_runs(full, other, "reference")
  with pytest.raises(SystemExit, match="is not a file"):
    shift_compare.load(os.path.join(out, "absent.json"))
  (tmp_path / "broken.json").write_text('{"results": ')
  with pytest.raises(SystemExit, match="broken.json is not JSON"):
    shift_compare.load(str(tmp_path / "broken.json"))


def test_cells_and_their_errors():
  cells = shift.parse_cells("pneumoniamnist", "pixelate, gamma_up", "3,1")
  assert [c.key for c in cells] == ["clean", "resampled", "pixelate_1", "pixelate_3", "gamma_up_1", "gamma_up_3"]
  assert len(shift.parse_cells("dermamnist", "", "1,2,3,4,5")) == 2 + 15 * 5
  with pytest.raises(UserError, match="'characters' is not a pneumoniamnist corruption"):
    shift.parse_cells("pneumoniamnist", "characters", "1")
  with pytest.raises(UserError, match="severities must lie in 1..5"):
    shift.parse_cells("pneumoniamnist", "", "0,1")
  with pytest.raises(UserError, match="comma-separated integers"):
    shift.parse_cells("pneumoniamnist", "", "high")


def test_bad_flags_are_one_line_errors(tmp_path):
  proc = run_python(
    ["-m", "medfusion.shift", f"--workdir={MODEL}", f"--output={tmp_path}", "--severities=6"], check=False
  )
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --severities=")
  assert len(proc.stderr.strip().splitlines()) == 1 and not os.listdir(tmp_path)


def test_a_timestep_weighting_is_refused_before_loading(tmp_path):
  """medfusion.shift keeps the vote and mean rows only: a weighting asked for is a one-line error, not ignored."""
  config = _config()
  config.classify.weighting = "label_free"
  with pytest.raises(UserError, match="medfusion.shift scores the vote and mean rows only"):
    shift.ModelUnderTest(config, str(tmp_path / "not even read"), store_errors=False)
