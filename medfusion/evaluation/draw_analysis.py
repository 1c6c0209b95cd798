"""How accuracy depends on the draws: the number K (mean vs vote) and the timestep t of each draw.

`split_runner.draw_errors` evaluates every image on all K draws and classes once; `k_sweep`, `t_profile` and
`early_stop_sweep` are pure functions of that tensor, so trying other K, t ranges or stopping levels costs no
network evaluations.
"""

import os

import numpy as np
from sklearn import metrics as skm

from medfusion import metrics, modeldir, plots
from medfusion.classify import aggregate
from medfusion.classify.classifier import DiffusionClassifier, prune_in_stages
from medfusion.data import pipeline
from medfusion.errors import UserError
from medfusion.evaluation import split_runner
from medfusion.writers import write_json_atomic, write_npz_atomic


def _running_totals(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(votes, mean errors) [N, C, K] after the first 1..K draws: index s holds the totals of draws 0..s."""
  winners = np.argmin(errors, axis=1)  # [N, K]; exact ties go to the lower class, as in votes_from_errors
  votes = np.cumsum(winners[:, None, :] == np.arange(errors.shape[1])[None, :, None], axis=2)
  return votes, np.cumsum(errors, axis=2) / np.arange(1, errors.shape[2] + 1)


def _running_sums(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Error sums [N, C, K] and sums of products [N, C, C, K] over draws 0..s, for each s."""
  return np.cumsum(errors, axis=2), np.cumsum(errors[:, :, None, :] * errors[:, None, :, :], axis=3)


def _vote_after(votes: np.ndarray, mean_errors: np.ndarray, draws: np.ndarray) -> np.ndarray:
  """Vote predictions [N] after `draws` [N] draws of each image, from the running totals."""
  at = (draws - 1)[:, None, None]
  return aggregate.vote_prediction(
    np.take_along_axis(votes, at, axis=2)[:, :, 0], np.take_along_axis(mean_errors, at, axis=2)[:, :, 0]
  )


def k_sweep(errors: np.ndarray, labels: np.ndarray, ks) -> dict:
  """Accuracy and balanced accuracy of the mean and vote aggregators on the first k draws, for each k in `ks`."""
  votes, mean_errors = _running_totals(errors)
  result = {"k": [int(k) for k in ks], "mean": [], "vote": [], "mean_balanced": [], "vote_balanced": []}
  for k in ks:
    for name, preds in (
      ("mean", aggregate.mean_prediction(mean_errors[:, :, k - 1])),
      ("vote", _vote_after(votes, mean_errors, np.full(len(labels), k))),
    ):
      result[name].append(float(np.mean(preds == labels)))
      result[f"{name}_balanced"].append(float(skm.balanced_accuracy_score(labels, preds)))
  return result


def early_stop_sweep(errors: np.ndarray, labels: np.ndarray, deltas, draws_per_round: int, min_draws: int = 0) -> dict:
  """Vote early stopping replayed on the error tensor: for the sequential test with each bound
  (`aggregate.STOPPING_BOUNDS`) and for the predictive rule, at each level delta, the mean draws per image, the
  share of predictions equal to the full budget's, accuracy, and the area under the risk-coverage curve with the
  vote share as confidence (`aurc`; the full budget's is `full_budget_aurc`); what `classify.adaptive=
  'sequential'` and `'predictive'` would do with these draws (rounds of `draws_per_round`, `min_draws`)."""
  n, c, k = errors.shape
  votes, mean_errors = _running_totals(errors)
  sums, grams = _running_sums(errors)

  def outcome(used):
    prediction = _vote_after(votes, mean_errors, used)
    share = np.take_along_axis(votes, (used - 1)[:, None, None], axis=2)[np.arange(n), prediction, 0] / used
    return prediction, metrics.aurc(prediction == labels, share)

  full, full_aurc = outcome(np.full(n, k))
  result = {"delta": [float(d) for d in deltas], "draws_per_round": draws_per_round, "min_draws": min_draws}
  result.update({"full_budget_draws": k, "full_budget_aurc": full_aurc})
  rules = [(bounds, "sequential", bounds) for bounds in aggregate.STOPPING_BOUNDS]
  rules.append(("predictive", "predictive", "exact"))  # name, rule, bounds (unused by the predictive rule)
  for name, adaptive, bounds in rules:
    rows = result[name] = {"mean_draws": [], "agreement": [], "accuracy": [], "aurc": []}
    for delta in deltas:
      rule = aggregate.StoppingRule.build(adaptive, k, draws_per_round, c, float(delta), min_draws, bounds)
      used = np.full(n, k)
      for stop in range(draws_per_round, k, draws_per_round):
        at = stop - 1
        decided = rule.decided(votes[:, :, at], np.full(n, k - stop), sums[:, :, at], grams[..., at])
        used[(used == k) & decided] = stop
      prediction, aurc = outcome(used)
      rows["mean_draws"].append(float(used.mean()))
      rows["agreement"].append(float(np.mean(prediction == full)))
      rows["accuracy"].append(float(np.mean(prediction == labels)))
      rows["aurc"].append(aurc)
  return result


def mean_stop_sweep(errors: np.ndarray, labels: np.ndarray, deltas, draws_per_round: int) -> dict:
  """Paired-gap early stopping of the mean-error decision (`aggregate.gap_critical_values`) replayed on the error
  tensor, for each level delta: mean draws per image, agreement with the full budget's mean-error prediction,
  and accuracy. An analysis, not an offered rule: see `gap_critical_values`."""
  n, c, k = errors.shape
  sums, grams = _running_sums(errors)
  full = aggregate.mean_prediction(sums[:, :, -1])
  result = {"delta": [float(d) for d in deltas], "draws_per_round": draws_per_round, "full_budget_draws": k}
  result.update({"mean_draws": [], "agreement": [], "accuracy": []})
  for delta in deltas:
    critical = aggregate.gap_critical_values(k, draws_per_round, c, float(delta))
    used = np.full(n, k)
    for stop in range(draws_per_round, k, draws_per_round):
      at = np.full(n, stop)
      decided = aggregate.sequential_mean_decided(sums[:, :, stop - 1], grams[..., stop - 1], at, critical)
      used[(used == k) & decided] = stop
    prediction = aggregate.mean_prediction(np.take_along_axis(sums, (used - 1)[:, None, None], axis=2)[:, :, 0])
    result["mean_draws"].append(float(used.mean()))
    result["agreement"].append(float(np.mean(prediction == full)))
    result["accuracy"].append(float(np.mean(prediction == labels)))
  return result


def in_t_range(errors: np.ndarray, t: np.ndarray, t_min: float, t_max: float, what: str):
  """The stored draws with t in [t_min, t_max], in their order: replaying a narrower t range than the draws were
  made for. Stratified draws leave every image the same number; anything else is an error naming `what`."""
  keep = (t >= t_min) & (t <= t_max)
  counts = keep.sum(axis=1)
  if counts.min() != counts.max() or counts.min() == 0:
    raise UserError(
      f"{what}: {counts.min()} to {counts.max()} draws per image lie in t in [{t_min}, {t_max}]; a replay needs the "
      "same number (> 0) for every image (stratified draws over a range that holds this one)"
    )
  n, c, _ = errors.shape
  return errors[np.repeat(keep[:, None, :], c, axis=1)].reshape(n, c, -1), t[keep].reshape(n, -1)


def prune_schedules(num_draws: int, num_classes: int) -> list[tuple[tuple[int, int], ...]]:
  """The staged pruning schedules `prune_sweep` replays by default: a first stage of 4, 8 or 16 draws on every
  class keeping the best 2 or 3, then the rest of a budget of K/2 or K draws on those."""
  schedules = []
  for total in sorted({num_draws // 2, num_draws}):
    for first in (4, 8, 16):
      for keep in (2, 3):
        if first < total and keep < num_classes:
          schedules.append(((first, keep), (total - first, keep)))
  return schedules


def prune_sweep(errors: np.ndarray, labels: np.ndarray, schedules) -> dict:
  """Staged class pruning (`classify.prune_stages`) replayed on the error tensor by the classifier's own stages
  (`classifier.prune_in_stages`, reading the stored draws). Per schedule: network evaluations per image, agreement
  with the full budget's mean-error prediction, and accuracy and balanced accuracy of both aggregators."""
  n, c, _ = errors.shape
  full = aggregate.mean_prediction(errors.mean(axis=2))

  def stored(rows, draw_ids, classes):  # every image is on the same draws in a stage
    return np.take_along_axis(errors[rows][:, :, draw_ids[0]], classes[:, :, None], axis=1)

  result = {"schedules": [], "nfe_per_image": [], "agreement": []}
  for name in ("mean", "vote"):
    result[f"{name}_accuracy"], result[f"{name}_balanced_accuracy"] = [], []
  for schedule in schedules:
    tally = prune_in_stages(n, c, tuple(schedule), max(n, 1), stored)
    means = tally.mean_errors
    mean_preds, vote_preds = aggregate.mean_prediction(means), aggregate.vote_prediction(tally.votes, means)
    result["schedules"].append([list(stage) for stage in schedule])
    result["nfe_per_image"].append(float(tally.nfe.mean()))
    result["agreement"].append(float(np.mean(mean_preds == full)))
    for name, preds in (("mean", mean_preds), ("vote", vote_preds)):
      result[f"{name}_accuracy"].append(float(np.mean(preds == labels)))
      result[f"{name}_balanced_accuracy"].append(float(skm.balanced_accuracy_score(labels, preds)))
  return result


def t_profile(errors: np.ndarray, t: np.ndarray, labels: np.ndarray, num_bins: int = 10) -> dict:
  """Single-draw accuracy (the draw's lowest-error class is the label) in `num_bins` equal bins of t, overall
  and per true class: where in the schedule the class signal lies. Bins without draws hold None (JSON null)."""
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  correct = np.argmin(errors, axis=1) == labels[:, None]  # [N, K]
  bins = np.clip(np.digitize(t, edges) - 1, 0, num_bins - 1)
  result = {"t_low": edges[:-1].tolist(), "t_high": edges[1:].tolist(), "draws": [], "accuracy": []}
  per_class = {int(c): [] for c in np.unique(labels)}
  for i in range(num_bins):
    in_bin = bins == i
    result["draws"].append(int(in_bin.sum()))
    result["accuracy"].append(float(correct[in_bin].mean()) if in_bin.any() else None)
    for c, accuracies in per_class.items():
      mask = in_bin & (labels[:, None] == c)
      accuracies.append(float(correct[mask].mean()) if mask.any() else None)
  result["accuracy_by_class"] = per_class
  return result


DELTAS = (0.001, 0.01, 0.02, 0.05, 0.1, 0.2)


def sweep_split(
  config, workdir: str, split_name: str, output: str, max_examples: int = 0, errors_npz: str = ""
) -> dict:
  """Evaluates the first config.classify.num_draws draws of `split_name` (or reads them from `errors_npz`, an
  errors.npz of an earlier sweep) and writes errors.npz, sweep.json, k_sweep.png, t_profile.png and
  early_stop.png to `output`; returns sweep.json's content."""
  model = modeldir.load_ema_params(config, workdir)
  if errors_npz:
    with np.load(errors_npz) as stored:
      errors, t, labels = stored["errors"], stored["t"], stored["labels"]
    n = len(labels) if max_examples <= 0 else min(max_examples, len(labels))
    errors, t = in_t_range(errors[:n], t[:n], config.classify.t_min, config.classify.t_max, errors_npz)
    labels = labels[:n]
  else:
    split = pipeline.load_split(config.data, split_name)
    n = len(split.labels) if max_examples <= 0 else min(max_examples, len(split.labels))
    classifier = DiffusionClassifier(config, model.params, source=model.description)
    with split_runner.progress_bar(n, f"draws {split_name}") as bar:
      errors, t = split_runner.draw_errors(classifier, split, n, bar.update)
    labels = split.labels[:n]
  step = model.step
  k = errors.shape[2]
  result = {
    "split": split_name,
    "n": n,
    "num_classes": int(errors.shape[1]),
    "checkpoint_step": step,
    "workdir": os.path.abspath(workdir),
    "classify": config.classify.to_dict(),
    "k_sweep": k_sweep(errors, labels, sorted({2**i for i in range(k.bit_length())} | {k})),
    "t_profile": t_profile(errors, t, labels),
    "early_stop": early_stop_sweep(errors, labels, DELTAS, config.classify.draws_per_round, config.classify.min_draws),
    "mean_stop": mean_stop_sweep(errors, labels, DELTAS, config.classify.draws_per_round),
  }
  if errors.shape[1] > 2:
    result["prune"] = prune_sweep(errors, labels, prune_schedules(k, errors.shape[1]))
  os.makedirs(output, exist_ok=True)
  write_npz_atomic(os.path.join(output, "errors.npz"), errors=errors, t=t, labels=labels)
  write_json_atomic(os.path.join(output, "sweep.json"), result)
  _plot(result, list(config.data.class_names), output)
  return result


def _plot(result: dict, class_names: list[str], output: str) -> None:
  sweep, profile, where = result["k_sweep"], result["t_profile"], f"{result['split']} (n={result['n']})"
  plots.save_line_plot_png(
    os.path.join(output, "k_sweep.png"),
    sweep["k"],
    {"mean error": sweep["mean"], "majority vote": sweep["vote"]},
    "draws K",
    "accuracy",
    f"{where}: accuracy vs number of draws",
    logx=True,
  )
  centres = (np.array(profile["t_low"]) + np.array(profile["t_high"])) / 2
  curves = {"all": profile["accuracy"]}
  curves.update({f"true {class_names[c]}": v for c, v in profile["accuracy_by_class"].items()})
  plots.save_line_plot_png(
    os.path.join(output, "t_profile.png"),
    centres,
    curves,
    "t (bin centre)",
    "single-draw accuracy",
    f"{where}: which timesteps carry the class",
  )
  _plot_frontier(result, os.path.join(output, "early_stop.png"))


def _plot_frontier(result: dict, path: str) -> None:
  """Accuracy against network evaluations per image for each stopping rule over delta, and the full budgets."""
  stop, mean_stop, c = result["early_stop"], result["mean_stop"], result["num_classes"]
  curves = {
    "vote, exact bounds": (stop["exact"]["mean_draws"], stop["exact"]["accuracy"]),
    "vote, Bonferroni bounds": (stop["bonferroni"]["mean_draws"], stop["bonferroni"]["accuracy"]),
    "vote, predictive rule": (stop["predictive"]["mean_draws"], stop["predictive"]["accuracy"]),
    "mean, paired-gap test": (mean_stop["mean_draws"], mean_stop["accuracy"]),
    "vote, first k draws": (result["k_sweep"]["k"], result["k_sweep"]["vote"]),
  }
  curves = {name: (np.asarray(x) * c, y) for name, (x, y) in curves.items()}
  plots.save_xy_plot_png(
    path, curves, "network evaluations per image", "accuracy", f"{result['split']}: early stopping over delta"
  )
  if "prune" in result:  # many classes: the cost of each rule against balanced accuracy, pruning included
    sweep, prune = result["k_sweep"], result["prune"]
    order = np.argsort(prune["nfe_per_image"])
    curves = {
      "mean, first k draws": (np.asarray(sweep["k"]) * c, sweep["mean_balanced"]),
      "vote, first k draws": (np.asarray(sweep["k"]) * c, sweep["vote_balanced"]),
      "mean, class pruning": (np.take(prune["nfe_per_image"], order), np.take(prune["mean_balanced_accuracy"], order)),
      "vote, class pruning": (np.take(prune["nfe_per_image"], order), np.take(prune["vote_balanced_accuracy"], order)),
    }
    plots.save_xy_plot_png(
      os.path.join(os.path.dirname(path), "frontier_balanced.png"),
      curves,
      "network evaluations per image",
      "balanced accuracy",
      f"{result['split']}: balanced accuracy against cost ({c} classes)",
    )
