"""What one medfusion.explain run computes, passed between its steps as two dataclasses (numpy only)."""

import dataclasses

import numpy as np

from medfusion import metrics
from medfusion.classify import aggregate


@dataclasses.dataclass
class Classified:
  """The full-budget classification of some images: [N] or [N, C] arrays."""

  votes: np.ndarray
  mean_error: np.ndarray
  prediction: np.ndarray
  vote_share: np.ndarray
  entropy: np.ndarray

  @classmethod
  def from_errors(cls, errors: np.ndarray) -> "Classified":
    """From errors [N, C, K] of every class on all K draws."""
    votes, mean_error = aggregate.votes_from_errors(errors), errors.mean(axis=2)
    prediction = aggregate.vote_prediction(votes, mean_error)
    share = votes[np.arange(len(votes)), prediction] / max(errors.shape[2], 1)
    return cls(votes, mean_error, prediction, share, metrics.vote_entropy(votes))


@dataclasses.dataclass
class Explained:
  """The explained images and everything drawn for them; arrays have one row per image."""

  split: str
  select: str
  checkpoint: str
  class_names: list[str]
  indices: np.ndarray  # [N] positions in the split
  images: np.ndarray  # [N, H, W, C] float in [-1, 1]
  labels: np.ndarray  # [N]
  masks: np.ndarray | None  # [N, H, W, 1] lesion masks, where the data has them
  classified: Classified
  contrast: np.ndarray  # [N] the class each map contrasts with the prediction
  counterfactuals: dict[str, np.ndarray]  # method -> [N, C, H, W, C]: toward every class
  maps: dict[str, np.ndarray]  # kind -> [N, H, W] in [0, 1]
  judge_prediction: np.ndarray | None  # [N] the ResNet judge's call, with a judge

  def summary(self) -> dict:
    """The run's summary: what was explained and how accurately the diffusion classifier called it."""
    return {
      "n": len(self.images),
      "split": self.split,
      "select": self.select,
      "indices": self.indices.tolist(),
      "accuracy": float(np.mean(self.classified.prediction == self.labels)),
      "checkpoint": self.checkpoint,
    }
