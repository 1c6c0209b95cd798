"""medfusion.sample and medfusion.explain end to end: the command lines on the lesion model, and the shipped
synthetic-lesions model and judge measured against a fair Grad-CAM, blur references and random maps."""

import dataclasses
import json
import os
import types

import numpy as np
import pytest
from conftest import LESION_MODEL_FLAGS, ROOT, run_pythons

from medfusion import stored_config
from medfusion.explanations import counterfactual, evaluate, maps, run, scores

# --- Command lines ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesion_judge():
  """The ResNet-18 judge shipped with pretrained/synthetic_lesions (trained on synthetic_lesions, 32x32, classes
  healthy and lesion, like the lesion_model fixture)."""
  return os.path.join(ROOT, "pretrained", "synthetic_lesions", "judge")


def cli_flags(config, workdir):
  """--config=configs/synthetic_lesions.py:smoke with the lesion_model fixture's overrides, and small batches."""
  return [
    "--config=configs/synthetic_lesions.py:smoke",
    f"--workdir={workdir}",
    f"--config.data.tfds_data_dir={config.data.tfds_data_dir}",
    *LESION_MODEL_FLAGS,
    "--config.classify.batch_size=8",
    "--config.explain.batch_size=8",
  ]


def test_sample_command_writes_a_grid_and_arrays(lesion_model, tmp_path):
  config, workdir = lesion_model
  args = ["-m", "medfusion.sample", *cli_flags(config, workdir), "--class=lesion,healthy", "--num=3"]
  proc, bad = run_pythons(
    [[*args, f"--output={tmp_path / 'a'}"], [*args, "--class=tumour", f"--output={tmp_path / 'b'}"]], check=False
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["classes"] == ["lesion", "healthy"]
  with np.load(tmp_path / "a" / "samples.npz") as f:
    samples = f["samples"]
    assert samples.shape == (2, 3, 32, 32, 1) and f["classes"].tolist() == ["lesion", "healthy"]
  assert os.path.getsize(tmp_path / "a" / "samples.png") > 500
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
    "error: --class='tumour' is not one of ('healthy', 'lesion', 'null')"
  ]


def test_explain_command_writes_panels_gallery_and_metrics(lesion_model, lesion_judge, tmp_path):
  config, workdir = lesion_model
  output = tmp_path / "out"
  args = [*cli_flags(config, workdir), "--split=val", "--max_examples=16", "--num=4"]
  args.append("--config.explain.faithfulness_steps=2")  # every curve, at three points each
  proc, bad = run_pythons(
    [
      [
        "-m",
        "medfusion.explain",
        *args,
        "--select=uncertain",
        f"--judge={lesion_judge}",
        "--evaluate",
        f"--output={output}",
      ],
      ["-m", "medfusion.explain", *args, "--select=worst", f"--output={tmp_path / 'bad'}"],
    ],
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["n"] == 4 and set(summary["counterfactuals"]) == set(counterfactual.METHODS)
  assert summary["gallery"] == str(output / "index.html")
  with open(output / "explain_metrics.json") as f:
    result = json.load(f)
  assert result["masks"] and result["pairs"] == 4 and result["settings"]["grad_cam_layer"] == "stage3"
  layers = {f"grad_cam_stage{s}.{b}" for s in range(1, 5) for b in (1, 2)}
  kinds = {"counterfactual_partial_noising", "counterfactual_ddim_inversion", "error_difference", "intensity", "blob"}
  gradients = {"grad_cam", "input_gradient", "smoothgrad", "integrated_gradients"}
  assert set(result["maps"]) == kinds | gradients | layers
  assert set(result["faithfulness_judge"]) == kinds | gradients | layers | {"random"}
  assert result["grad_cam_feature_sizes"]["stage3.2"] == 8 and result["grad_cam_feature_sizes"]["stage4.2"] == 4
  # the configured Grad-CAM is the end of stage 3
  assert result["maps"]["grad_cam"] == result["maps"]["grad_cam_stage3.2"]
  assert set(result["references"]) == {"blur", "noise"}
  for method in counterfactual.METHODS:
    entry = result["counterfactuals"][method]
    assert {"valid_flip_rate", "flip_rate_judge", "change_inside", "change_outside"} <= set(entry)
    assert entry["valid_flip_rate"] <= entry["flip_rate_judge"]  # gating only removes flips
    curve = entry["valid_flip_curve"]  # rises with the budget, up to the judge's flip rate
    assert np.all(np.diff(curve["rates"]) >= 0) and curve["rates"][-1] <= entry["flip_rate_judge"]
  with np.load(output / "explanations.npz") as f:
    indices = f["index"].tolist()
    assert len(indices) == 4 and f["counterfactuals_ddim_inversion"].shape == (4, 2, 32, 32, 1)
    assert f["map_grad_cam"].shape == (4, 32, 32) and f["masks"].shape == (4, 32, 32, 1)
  for index in indices:
    assert os.path.getsize(output / "panels" / f"{index:05d}.png") > 1000
  with open(output / "index.html") as f:
    page = f.read()
  assert all(f"panels/{index:05d}.png" in page for index in indices)
  assert "Grad-CAM (ResNet, stage3)" in page and "ADDS evidence" not in page and "ADDED" in page  # the legend
  assert "valid flip" in page  # the --evaluate scores
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--select='worst'" in bad.stderr
  assert not os.path.exists(tmp_path / "bad")


def test_explain_without_masks_reports_flip_rates_and_whole_image_proximity(lesion_model, tmp_path, monkeypatch):
  from medfusion.data import pipeline

  config, workdir = lesion_model
  config = config.copy_and_resolve_references()
  config.classify.batch_size = 8
  config.explain.update(batch_size=8, method="ddim_inversion", error_map=False)
  load_split = pipeline.load_split
  monkeypatch.setattr(pipeline, "load_split", lambda *a: dataclasses.replace(load_split(*a), masks=None))
  result = run.explain_split(config, workdir, "val", str(tmp_path), 2, evaluate=True)
  metrics = result["metrics"]
  assert not metrics["masks"] and "maps" not in metrics and "references" not in metrics  # no judge, no masks
  for entry in metrics["counterfactuals"].values():
    assert set(entry) == {
      "change_outside",
      "change_whole",
      "toward_prediction_change",
      "flip_rate_diffusion_consistency_only",
    }
    assert entry["change_whole"] == entry["change_outside"] > 0  # without masks the whole image is "outside"
  assert (tmp_path / "index.html").exists() and (tmp_path / "explain_metrics.json").exists()


# --- The shipped synthetic-lesions model and judge ----------------------------------------------------------------


FAITHFULNESS_STEPS = 5  # the shipped fixture's deletion and insertion curves: pixels in 20 % steps


@pytest.fixture(scope="module")
def shipped(tfds_dir, lesion_judge, tmp_path_factory):
  """--evaluate on the first 8 test images (4 with a lesion) with pretrained/synthetic_lesions and its judge, at a
  smaller classification budget (8 draws): (explain_metrics content, explanations.npz arrays, judge)."""
  from medfusion.explanations.judge import Judge

  workdir = os.path.join(ROOT, "pretrained", "synthetic_lesions")
  config = stored_config.get_config(workdir)
  config.data.update(synthetic_config="smoke", tfds_data_dir=tfds_dir)  # test images i are those of the full build
  config.classify.update(num_draws=8, batch_size=8)
  config.explain.update(batch_size=16, faithfulness_steps=FAITHFULNESS_STEPS)  # 25 sampler steps each way, as shipped
  out = tmp_path_factory.mktemp("shipped")
  result = run.explain_split(config, workdir, "test", str(out), 8, judge_workdir=lesion_judge, evaluate=True)
  with np.load(out / "explanations.npz") as f:
    arrays = dict(f)
  return result["metrics"], arrays, Judge(lesion_judge, config.data.class_names)


def test_shipped_counterfactual_difference_is_more_precise_than_the_fair_grad_cam(shipped):
  metrics, _, _ = shipped
  assert metrics["images_with_mask"] == 4 and metrics["settings"]["grad_cam_layer"] == "stage3"
  precision = {kind: entry["mask_size_precision"] for kind, entry in metrics["maps"].items()}
  assert precision["counterfactual_ddim_inversion"] > precision["grad_cam"]
  assert precision["counterfactual_ddim_inversion"] > precision["grad_cam_stage3.1"]  # the best 8x8 block too


def test_shipped_counterfactuals_flip_validly_more_often_than_a_blur(shipped):
  metrics, _, _ = shipped
  blur = metrics["references"]["blur"]
  assert metrics["counterfactuals"]["ddim_inversion"]["valid_flip_rate"] > blur["valid_flip_rate"]
  curve_area = metrics["counterfactuals"]["ddim_inversion"]["valid_flip_curve"]["area"]
  assert curve_area > max(metrics["references"][kind]["valid_flip_curve"]["area"] for kind in ("blur", "noise"))
  assert metrics["counterfactuals"]["ddim_inversion"]["toward_prediction_kept_rate_judge"] == 1.0


def test_gating_rejects_a_blurred_image_that_fools_the_judge(shipped):
  metrics, arrays, judge = shipped
  lesion = np.nonzero(arrays["masks"].reshape(8, -1).any(axis=1))[0]
  images, masks = arrays["images"][lesion], arrays["masks"][lesion]
  blurred = evaluate.degrade(images, "blur", 2.0)
  judged = np.argmax(judge.probabilities(blurred), axis=1)
  assert np.all(judged == 0)  # the judge calls every blurred lesion image healthy...
  change = evaluate.changes(images, blurred, masks, range(len(images)))
  targets = np.zeros(len(images), int)
  assert not scores.valid_flips(judged, targets, change, metrics["settings"]["valid_change"]).any()  # ...not valid


def test_deletion_curves_of_a_random_map_sit_at_the_reference(shipped):
  metrics, arrays, judge = shipped
  images = arrays["images"]
  classes = np.argmax(judge.probabilities(images), axis=1)
  ex = types.SimpleNamespace(
    images=images, maps={"other": np.stack([maps.random_map((32, 32), 7 + i) for i in range(8)])}
  )
  out = evaluate.faithfulness_scores(ex, judge.probabilities, classes, FAITHFULNESS_STEPS, ["other"])
  reference = metrics["faithfulness_judge"]["random"]
  assert out["random"] == reference  # the same images, steps and seeds give the same reference
  assert abs(out["other"]["deletion_auc"] - reference["deletion_auc"]) < 0.1
  counterfactual_map = metrics["faithfulness_judge"]["counterfactual_ddim_inversion"]
  assert counterfactual_map["deletion_auc"] < reference["deletion_auc"]


@pytest.fixture(scope="module")
def shipped_hard(tfds_dir, tmp_path_factory):
  """--evaluate on the first 8 test images of the hard variant (4 with a lesion: one of each kind) with
  pretrained/synthetic_lesions_hard and its judge, at 8 draws: explain_metrics content."""
  workdir = os.path.join(ROOT, "pretrained", "synthetic_lesions_hard")
  config = stored_config.get_config(workdir)
  config.data.update(synthetic_config="hard_smoke", tfds_data_dir=tfds_dir)  # test images i are those of the full build
  config.classify.update(num_draws=8, batch_size=8)
  config.explain.update(batch_size=16, faithfulness_steps=FAITHFULNESS_STEPS)
  out = tmp_path_factory.mktemp("shipped_hard")
  judge = os.path.join(workdir, "judge")
  return run.explain_split(config, workdir, "test", str(out), 8, judge_workdir=judge, evaluate=True)["metrics"]


def test_shipped_hard_set_maps_follow_the_lesion_not_brightness(shipped_hard):
  precision = {kind: entry["mask_size_precision"] for kind, entry in shipped_hard["maps"].items()}
  assert shipped_hard["images_with_mask"] == 4
  brightness = max(precision["blob"], precision["intensity"])  # no model: what brightness alone finds
  for kind in ("error_difference", "counterfactual_ddim_inversion"):
    assert precision[kind] > brightness + 0.3 and precision[kind] > precision["grad_cam"]


def test_diffusion_curve_ends_are_the_ends_of_the_curves(shipped, tmp_path, monkeypatch):
  """docs/explanations/diffusion_curve_ends.py: the random-order deletion curve starts at the vote share on the images
  and ends at the share on their removed versions (insertion the other way round), the same draws either way."""
  monkeypatch.syspath_prepend(os.path.join(ROOT, "docs", "explanations"))
  import diffusion_curve_ends

  _, arrays, _ = shipped
  explained = tmp_path / "explanations.npz"
  np.savez(explained, **{key: arrays[key][:4] for key in ("images", "index", "prediction")})
  out = diffusion_curve_ends.main(os.path.join(ROOT, "pretrained", "synthetic_lesions"), str(explained), draws=2)
  deletion, insertion = out["random_order_mean_curves"]["deletion"], out["random_order_mean_curves"]["insertion"]
  assert len(deletion) == len(insertion) == diffusion_curve_ends.STEPS + 1
  assert deletion[0] == insertion[-1] == round(out["share_of_call_image"], 3)
  assert deletion[-1] == insertion[0] == round(out["share_of_call_removed"], 3)
  assert sum(out["calls_on_removed"].values()) == 4
  with pytest.raises(SystemExit, match="absent.npz does not exist"):
    diffusion_curve_ends.cli([os.path.join(ROOT, "pretrained", "synthetic_lesions"), str(tmp_path / "absent.npz")])
  with pytest.raises(SystemExit):  # argparse: usage and one line, exit 2
    diffusion_curve_ends.cli([os.path.join(ROOT, "pretrained", "synthetic_lesions"), str(explained), "0"])
