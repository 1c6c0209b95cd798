"""One process of a training and scoring run on CPU: a few steps of train_losses_script.tiny_config through the real
`train_and_evaluate`, then `score_split` on the first eval images. Run by test_multiprocess.py in two processes at
once with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set (what
runtime.maybe_initialize_distributed reads); alone, it is the single-process reference. Prints what it saw as JSON.

  python tests/multiprocess_script.py PREPARED WORKDIR OUTPUT [CHECKPOINT_MINUTES]

PREPARED holds the splits as medfusion.prepare writes them (source 'arrays': no TensorFlow to import).
CHECKPOINT_MINUTES (config.train.checkpoint_minutes of this process only) lets one process's clock ask for a save.
"""

import json
import sys

import jax
from train_losses_script import tiny_config

from medfusion import runtime
from medfusion.evaluation import split_scoring
from medfusion.training import diffusion_trainer

STEPS = 3
SCORED = 16  # the evaluator's images: scoring reuses the kernel it compiled (same batch shape)


def config(prepared: str):
  """tiny_config on the arrays in `prepared` for STEPS steps, logging every step, both evaluators and a checkpoint
  at the last step; the classifier has the evaluator's draws, so scoring reuses its compiled kernel."""
  config = tiny_config("")
  config.data.update(source="arrays", folder=prepared)
  config.train.update(steps=STEPS, log_every=1, checkpoint_every=STEPS, progress_bar=False)
  config.evals.loss.update(every=STEPS, num_examples=16, batch_size=16)
  config.evals.classify.update(every=STEPS, num_examples=16)
  config.classify.num_draws = config.evals.classify.num_draws
  return config


def run(prepared: str, workdir: str, output: str, checkpoint_minutes: str = "") -> dict:
  """Trains into `workdir` and scores SCORED images of the eval split into `output`."""
  distributed = runtime.maybe_initialize_distributed(False)
  cfg = config(prepared)
  if checkpoint_minutes:
    cfg.train.checkpoint_minutes = float(checkpoint_minutes)
  state = diffusion_trainer.train_and_evaluate(cfg, workdir)
  scores = split_scoring.score_split(cfg, workdir, cfg.data.eval_split, output, max_examples=SCORED)
  return {
    "distributed": distributed,
    "process": jax.process_index(),
    "processes": jax.process_count(),
    "devices": jax.device_count(),
    "step": int(state.step),
    "scores": scores,
  }


if __name__ == "__main__":
  print(json.dumps(run(*sys.argv[1:])))
