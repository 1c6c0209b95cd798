r"""Scores a split under the MedMNIST-C corruptions (every corruption x severity, and clean), for any model.

  python -m medfusion.shift --workdir=pretrained/pneumoniamnist --split=val --output=OUT \
      --compare=pretrained/pneumoniamnist/judge --max_examples=128 --severities=1,3,5 \
      --config.classify.num_draws=16

--workdir and --compare may each be a diffusion model or a ResNet-18 workdir; both score the same corrupted images
(corrupted at 224x224 with MedMNIST-C's published parameters and brought back to the split's size: see
medfusion/data/corruptions.py). --config overrides apply to --workdir; --compare runs with its own config.json and
is the reference the summary normalises by. Writes OUT/shift.json (per corruption x severity and aggregator:
accuracy, balanced accuracy, AUC, ECE, AURC, misclassification AUROC, NFE per image; MedMNIST-C's summary) and
OUT/shift.png (balanced error against severity). Finished cells are kept in OUT/cells: started again with the same
arguments, it continues. --errors stores every draw's errors per cell for replaying stopping rules.
"""

import json

from absl import flags

from medfusion import cli

cli.define_model_flags()
flags.DEFINE_string("compare", "", "A second workdir (e.g. the ResNet-18 baseline) scored on the same images.")
flags.DEFINE_string("corruptions", "", "Comma-separated corruptions (default: every one of the dataset's set).")
flags.DEFINE_string("severities", "1,2,3,4,5", "Comma-separated severities in 1..5.")
flags.DEFINE_string("corruption_set", "", "pneumoniamnist | dermamnist (default: from the data file or channels).")
flags.DEFINE_bool("errors", False, "Store every draw's errors per cell (diffusion models; scores the full budget).")
FLAGS = flags.FLAGS


def main(argv):
  config = cli.start(argv)
  from medfusion.evaluation import shift

  result = shift.run(
    config,
    FLAGS.workdir,
    FLAGS.split,
    FLAGS.output,
    max_examples=FLAGS.max_examples,
    corruption_list=FLAGS.corruptions,
    severity_list=FLAGS.severities,
    compare=FLAGS.compare,
    store_errors=FLAGS.errors,
    dataset=FLAGS.corruption_set,
  )
  brief = {
    model: {
      agg: {k: round(v, 4) for k, v in row.items() if k.startswith("mean_") and v is not None}
      for agg, row in rows.items()
    }
    for model, rows in result["summary"].items()
  }
  print(json.dumps({"n": result["n"], "summary": brief}))


if __name__ == "__main__":
  cli.run(main)
