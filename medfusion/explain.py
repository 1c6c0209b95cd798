r"""Explains a trained diffusion classifier's decisions on images of a split: counterfactuals and maps.

  python -m medfusion.explain --workdir=pretrained/pneumoniamnist --split=val --num=16 --output=OUT \
      --select=errors --judge=runs/pneumonia_resnet --evaluate

For each of --num images (chosen among the split's first --max_examples: the first ones, the misclassified ones
with the most confident first, the least certain ones, or at random) it classifies the image with all
config.classify.num_draws draws, edits it toward every class (config.explain.method: partial_noising or
ddim_inversion, from noise level config.explain.t_star with guidance config.explain.guidance), and maps where the
evidence lies: the counterfactual difference |x - x_cf|, the error-difference map (per-pixel denoising errors of
the competing classes over the classification draws), the input intensity and, with --judge (the workdir of a
ResNet-18 trained with configs/*_resnet.py on the same data), its Grad-CAM (config.explain.grad_cam_layer) and
input gradients, and the model-free bright-blob detector.
Writes OUT/panels/<index>.png (input, counterfactuals, maps, label, prediction, vote share), OUT/explanations.npz
(every array) and OUT/index.html (the gallery, with a legend). --evaluate runs both counterfactual methods, adds
Grad-CAM at every block of the judge, SmoothGrad and integrated gradients, and writes OUT/explain_metrics.json
(medfusion/explanations/evaluate.py): valid flips (the judge calls the counterfactual the target class and it
changes the image outside the lesion mask by less than config.explain.valid_change) beside blur and noise
references, the counterfactual toward the predicted class, mask-size precision and pointing game (0 and 2 pixels)
of every map on data with lesion masks, and deletion/insertion areas of every map against random pixel orders.
"""

import json
import os

from absl import flags

from medfusion import cli

cli.define_model_flags()
flags.DEFINE_integer("num", 16, "Images to explain.", lower_bound=1)
flags.DEFINE_string("select", "first", "Which images: first | errors | uncertain | random (seeded by config.seed).")
flags.DEFINE_string(
  "judge",
  "",
  "Workdir of a ResNet-18 trained on the same data: judge of counterfactuals, baselines (default: WORKDIR/judge "
  "when the model folder ships one, as pretrained/synthetic_lesions does).",
)
flags.DEFINE_bool("evaluate", False, "Score the explanations (both counterfactual methods): explain_metrics.json.")
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.explanations import run

  shipped_judge = os.path.join(FLAGS.workdir, "judge")
  judge = FLAGS.judge or (shipped_judge if os.path.isdir(shipped_judge) else "")
  result = run.explain_split(
    config,
    FLAGS.workdir,
    FLAGS.split,
    FLAGS.output,
    FLAGS.num,
    FLAGS.select,
    judge,
    FLAGS.evaluate,
    FLAGS.max_examples,
  )
  summary = {k: result[k] for k in ("n", "split", "select", "accuracy")}
  if "metrics" in result:
    keys = ("valid_flip_rate", "flip_rate_judge", "change_outside")
    summary["counterfactuals"] = {
      method: {k: v for k, v in entry.items() if k in keys}
      for method, entry in result["metrics"]["counterfactuals"].items()
    }
    summary["references"] = {
      kind: entry["valid_flip_rate"] for kind, entry in result["metrics"].get("references", {}).items()
    }
    summary["explain_metrics"] = os.path.join(FLAGS.output, "explain_metrics.json")
  summary["gallery"] = os.path.join(FLAGS.output, "index.html")
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main)
