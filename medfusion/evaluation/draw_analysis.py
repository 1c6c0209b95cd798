"""How accuracy depends on the draws: the number K (mean vs vote) and the timestep t of each draw.

`split_runner.draw_errors` evaluates every image on all K draws and classes once; `k_sweep`, `t_profile` and
`early_stop_sweep` are pure functions of that tensor, so trying other K, t ranges or stopping levels costs no
network evaluations.
"""

import os
import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from medfusion import metrics, modeldir, plots
from medfusion.classify import aggregate, weighting
from medfusion.classify.classifier import DiffusionClassifier, prune_in_stages
from medfusion.data import pipeline
from medfusion.errors import UserError
from medfusion.evaluation import report, split_runner
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


def replay_stops(votes, sums, grams, rule: aggregate.StoppingRule, draws_per_round: int) -> np.ndarray:
  """Draws [N] each image spends under `rule` with looks every `draws_per_round` draws, from the running totals
  (`_running_totals`' votes [N, C, K], `_running_sums`' sums [N, C, K] and grams [N, C, C, K]); only images still
  going are looked at."""
  n, _, k = votes.shape
  used = np.full(n, k)
  for stop in range(draws_per_round, k, draws_per_round):
    going = np.flatnonzero(used == k)
    if going.size == 0:
      break
    at = stop - 1
    decided = rule.decided(
      votes[going, :, at], np.full(going.size, k - stop), sums[going, :, at], grams[going, ..., at]
    )
    used[going[decided]] = stop
  return used


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
      used = replay_stops(votes, sums, grams, rule, draws_per_round)
      prediction, aurc = outcome(used)
      rows["mean_draws"].append(float(used.mean()))
      rows["agreement"].append(float(np.mean(prediction == full)))
      rows["accuracy"].append(float(np.mean(prediction == labels)))
      rows["aurc"].append(aurc)
  return result


def half_split_protocol(labels: np.ndarray, choose, report, seed: int = 0) -> dict:
  """Selection that does not tune on what it reports: `choose(indices)` picks a setting (JSON-able) from the
  images of one half, `report(indices, setting)` measures it (a dict of numbers) on any images. Both directions
  of `pipeline.half_split(labels, seed)`: the setting chosen on each half, its figures on that half (`selection`) and on
  the other (`reporting`), and reporting minus selection (`difference`: how much the choice flattered itself)."""
  a, b = pipeline.half_split(labels, seed)
  result = {"seed": seed, "halves": [int(len(a)), int(len(b))], "directions": []}
  for name, select, held_out in (("select on A, report on B", a, b), ("select on B, report on A", b, a)):
    setting = choose(select)
    on_selection, on_reporting = report(select, setting), report(held_out, setting)
    difference = {
      key: on_reporting[key] - on_selection[key]
      for key in on_reporting
      if isinstance(on_reporting[key], float | int) and isinstance(on_selection.get(key), float | int)
    }
    result["directions"].append(
      {"name": name, "setting": setting, "selection": on_selection, "reporting": on_reporting, "difference": difference}
    )
  return result


def reorderings(num_images: int, num_draws: int, orders: int, seed: int = 0) -> np.ndarray:
  """Draw orders [orders, N, K]: order 0 is the stored one, the others a seeded permutation per image (an image's
  draws are exchangeable, so any order is one a live run could have drawn)."""
  rng = np.random.default_rng(seed)
  stored = np.broadcast_to(np.arange(num_draws), (num_images, num_draws))
  return np.stack([stored] + [rng.permuted(stored, axis=1) for _ in range(orders - 1)])


def stopped_metrics(errors, labels, used, temperature: float, prior=None) -> dict:
  """Both aggregators after each image's first `used` [N] draws of errors [N, C, K]: network evaluations per image
  and, per aggregator, accuracy, balanced accuracy, AUC (macro over classes), AURC and misclassification AUROC with
  its confidence (vote: the predicted class's vote share, as probabilities the vote shares; mean: softmax(-mean
  error / temperature + log prior))."""
  n, c, _ = errors.shape
  used = np.asarray(used)
  kept = np.arange(errors.shape[2])[None, :] < used[:, None]  # [N, K]
  winners = np.argmin(errors, axis=1)  # exact ties go to the lower class, as in votes_from_errors
  votes = ((winners[:, None, :] == np.arange(c)[None, :, None]) & kept[:, None, :]).sum(axis=2)
  mean_errors = np.where(kept[:, None, :], errors, 0.0).sum(axis=2) / used[:, None]
  totals = report.Totals(np.arange(n), np.asarray(labels), votes, mean_errors, used, c * used)
  columns = report.per_image(totals, temperature, prior)
  split = report.split_metrics(totals, columns)
  result = {"nfe_per_image": split["nfe_per_image"]}
  for name in ("vote", "mean"):
    for key in ("accuracy", "balanced_accuracy", "auc", "aurc", "misclassification_auroc"):
      result[f"{name}_{key}"] = split[name][key]
  result["predictions"] = {"vote": columns["prediction"], "mean": columns["prediction_mean"]}
  return result


def _json_number(value) -> float | None:
  """A float for sweep.json, None where undefined (strict JSON has no NaN)."""
  return float(value) if np.isfinite(value) else None


def reordered_stopping(errors, labels, rule, draws_per_round: int, temperature: float, orders: int = 100, seed=0):
  """`rule` replayed on `orders` orders of each image's draws (`reorderings`): the disagreement with the full
  budget as a rate (mean over orders of the share of images whose vote / mean decision differs), the share of
  orders with at least one differing vote, and every figure of `stopped_metrics` averaged over orders beside
  the full budget's (which no order changes)."""
  n, c, k = errors.shape
  full = stopped_metrics(errors, labels, np.full(n, k), temperature)
  rows = []
  for order in reorderings(n, k, orders, seed):
    permuted = np.take_along_axis(errors, order[:, None, :], axis=2)
    votes, _ = _running_totals(permuted)
    sums, grams = _running_sums(permuted)
    stopped = stopped_metrics(permuted, labels, replay_stops(votes, sums, grams, rule, draws_per_round), temperature)
    differs = {name: stopped["predictions"][name] != full["predictions"][name] for name in ("vote", "mean")}
    rows.append(
      {k2: v for k2, v in stopped.items() if k2 != "predictions"}
      | {f"{name}_disagreement": float(d.mean()) for name, d in differs.items()}
      | {"any_vote_differs": float(differs["vote"].any())}
    )
  with np.errstate(invalid="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # an AUROC undefined in every order stays NaN
    averaged = {key: _json_number(np.nanmean([r[key] for r in rows])) for key in rows[0]}
  averaged["orders_with_a_differing_vote"] = averaged.pop("any_vote_differs")
  return {
    "orders": orders,
    "seed": seed,
    "rule": {
      "adaptive": rule.adaptive,
      "delta": rule.delta,
      "draws_per_round": draws_per_round,
      "min_draws": rule.min_draws,
      "share_floor": rule.share_floor,
      "margin_floor": rule.margin_floor,
    },
    "full_budget": {key: _json_number(v) for key, v in full.items() if key != "predictions"},
    "stopped": averaged,
  }


# Issue 21's target for an adaptive default, against the full budget on the same images: AUC within 0.5 points,
# AURC within 10 %, misclassification AUROC within 0.02 (each for the vote and the mean), at <= 40 % of its cost.
STOPPING_TARGET = {"auc_points": 0.005, "aurc_ratio": 1.10, "misclassification_auroc": 0.02, "cost_share": 0.40}


def stopping_target_met(stopped: dict, full: dict, target=None) -> dict:
  """Which parts of `STOPPING_TARGET` (or `target`) a stopped run's figures meet against the full budget's
  (`stopped_metrics` keys): per check a bool, and `all`."""
  target = STOPPING_TARGET if target is None else target

  def at_least(value, floor):  # an undefined figure (None) fails its check
    return value is not None and floor is not None and value >= floor

  checks = {"cost": stopped["nfe_per_image"] <= target["cost_share"] * full["nfe_per_image"]}
  for name in ("vote", "mean"):
    auc, aurc, mis = (f"{name}_{key}" for key in ("auc", "aurc", "misclassification_auroc"))
    checks[auc] = at_least(stopped[auc], None if full[auc] is None else full[auc] - target["auc_points"])
    checks[aurc] = at_least(None if full[aurc] is None else target["aurc_ratio"] * full[aurc], stopped[aurc])
    checks[mis] = at_least(stopped[mis], None if full[mis] is None else full[mis] - target["misclassification_auroc"])
  checks = {key: bool(v) for key, v in checks.items()}
  checks["all"] = all(checks.values())
  return checks


def decision_scores(labels: np.ndarray, probs: np.ndarray) -> dict:
  """Macro AUC (one-vs-rest, Mann-Whitney with ties counted half; of class 1 for two classes), accuracy and
  balanced accuracy (mean recall over the classes present) of class probabilities [N, C]: fast enough to
  bootstrap."""
  labels, probs = np.asarray(labels), np.asarray(probs)
  preds = probs.argmax(axis=1)
  c = probs.shape[1]
  present = np.unique(labels)
  ranks = stats.rankdata(probs, axis=0)
  positive = labels[:, None] == present[None, :]
  n_pos, n_neg = positive.sum(axis=0), (~positive).sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    aucs = ((ranks[:, present] * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
  auc = (aucs[present == 1][0] if 1 in present else np.nan) if c == 2 else np.nanmean(aucs)
  recall = [np.mean(preds[labels == k] == k) for k in present]
  return {
    "macro_auc": float(auc),
    "accuracy": float(np.mean(preds == labels)),
    "balanced_accuracy": float(np.mean(recall)),
  }


def weighting_half_split(errors, t, labels, choice: str, t_min: float, t_max: float, num_bins=10, seed=0) -> dict:
  """A timestep weighting (`config.classify.weighting` = `choice`) fitted on one half of the images and scored on
  the other, both directions (`half_split_protocol`), beside the plain mean error with its temperature fitted on
  the same half: `decision_scores` at the uniform prior."""
  form, offsets = weighting.parse_choice(choice)

  def choose(indices):
    fitted = weighting.fit(errors[indices], t[indices], labels[indices], form, num_bins, t_min, t_max, offsets)
    temperature = metrics.fit_temperature(-errors[indices].mean(axis=2), labels[indices])
    return {"weighting": fitted.to_json(), "temperature": temperature}

  def report_on(indices, setting):
    fitted = weighting.TimestepWeighting.from_json(setting["weighting"])
    plain = metrics.softmax_with_temperature(-errors[indices].mean(axis=2), setting["temperature"])
    weighted = metrics.softmax_with_temperature(fitted.logits(errors[indices], t[indices]), 1.0)
    mean, ours = decision_scores(labels[indices], plain), decision_scores(labels[indices], weighted)
    return {f"mean_{k}": v for k, v in mean.items()} | {f"weighted_{k}": v for k, v in ours.items()}

  return half_split_protocol(labels, choose, report_on, seed)


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
  config,
  workdir: str,
  split_name: str,
  output: str,
  max_examples: int = 0,
  errors_npz: str = "",
  reorderings: int = 100,
  store_weighting: bool = False,
) -> dict:
  """Evaluates the first config.classify.num_draws draws of `split_name` (or reads them from `errors_npz`, an
  errors.npz of an earlier sweep) and writes errors.npz, sweep.json, k_sweep.png, t_profile.png and
  early_stop.png to `output`; returns sweep.json's content.

  sweep.json's `reordered` replays the config's stopping rule (the predictive rule at its delta when adaptive is
  none) on `reorderings` orders of the draws (`reordered_stopping`). With `config.classify.weighting` set, its
  `weighting` holds that weighting fitted on one half and scored on the other (`weighting_half_split`), and the
  figures of the weighting stored in the model folder, if any; `store_weighting` first fits it on all these
  draws and stores it there (`modeldir.store_weighting`)."""
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
  if reorderings > 0:
    result["reordered"] = _reordered(config, workdir, step, errors, labels, reorderings)
  if config.classify.weighting != "none":
    result["weighting"] = _weighting(config, workdir, step, errors, t, labels, split_name, store_weighting)
  os.makedirs(output, exist_ok=True)
  write_npz_atomic(os.path.join(output, "errors.npz"), errors=errors, t=t, labels=labels)
  write_json_atomic(os.path.join(output, "sweep.json"), result)
  _plot(result, list(config.data.class_names), output)
  return result


def _reordered(config, workdir: str, step: int, errors, labels, orders: int) -> dict:
  """The config's stopping rule (the predictive rule at its settings when adaptive is none) on `orders` orders."""
  c, n, k = config.classify, errors.shape[1], errors.shape[2]
  adaptive = c.adaptive if c.adaptive != "none" else "predictive"
  rule = aggregate.StoppingRule.build(adaptive, k, c.draws_per_round, n, c.delta, c.min_draws)
  temperature = modeldir.temperature(config, workdir, step)[0]
  if temperature is None:  # only the mean's probabilities depend on it, not its decisions or ranks
    temperature = metrics.fit_temperature(-errors.mean(axis=2), labels)
  return reordered_stopping(errors, labels, rule, c.draws_per_round, temperature, orders, seed=config.seed)


def _weighting(config, workdir: str, step: int, errors, t, labels, split_name: str, store: bool) -> dict:
  choice, c = config.classify.weighting, config.classify
  result = {"choice": choice, "half_split": weighting_half_split(errors, t, labels, choice, c.t_min, c.t_max)}
  key = modeldir.weighting_key(config, step)
  if store:
    form, offsets = weighting.parse_choice(choice)
    fitted = weighting.fit(errors, t, labels, form, 10, c.t_min, c.t_max, offsets)
    modeldir.store_weighting(workdir, key, fitted.to_json(), f"{split_name} ({len(labels)} images)", len(labels))
  stored = modeldir.stored_weighting(workdir, key)
  if stored is not None:
    logits = weighting.TimestepWeighting.from_json(stored).logits(errors, t)
    result["stored"] = decision_scores(labels, metrics.softmax_with_temperature(logits, 1.0))
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
  deltas = [f"δ={d:g}" for d in stop["delta"]]
  plots.save_xy_plot_png(
    path,
    curves,
    "network evaluations per image",
    "accuracy",
    f"{result['split']}, n = {result['n']} images: early stopping over δ (each point one δ)",
    point_labels={"vote, predictive rule": deltas, "mean, paired-gap test": [f"δ={d:g}" for d in mean_stop["delta"]]},
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
