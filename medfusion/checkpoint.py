"""Orbax checkpoints in a workdir: the latest few for resuming, and the best one by a validation metric.

`workdir/checkpoints/<step>` holds the newest `keep` checkpoints and `workdir/best/<step>` the single best.
Orbax writes each checkpoint to a temporary folder and renames it when complete, so a process killed
mid-save leaves nothing that a restore would pick up.
"""

import os

import jax
import orbax.checkpoint as ocp

from medfusion.errors import UserError


class CheckpointError(UserError):
  """A workdir without a usable checkpoint, or one that does not fit the config."""


def _manager(directory: str, state_handler=None, **options) -> ocp.CheckpointManager:
  # Barrier names of its own ('checkpoints_...', 'best_...'): the latest and the best manager save the same step at
  # once, and in a multi-process run two async saves under one name fail ("Barrier ... is already ongoing").
  multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=os.path.basename(directory))
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(multiprocessing_options=multiprocessing, **options),
    item_handlers={"state": state_handler or ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
  )


class Checkpoints:
  """The train state's checkpoints in one workdir."""

  def __init__(self, workdir: str, keep: int = 3, best_metric: str = "", best_mode: str = "min"):
    self.workdir = os.path.abspath(workdir)
    # cleanup_tmp_directories: a save cut short by SIGKILL leaves a *.orbax-checkpoint-tmp folder; drop it.
    self.latest = _manager(
      os.path.join(self.workdir, "checkpoints"), max_to_keep=keep, create=True, cleanup_tmp_directories=True
    )
    self.best_metric = best_metric
    self.best = None
    if best_metric:
      self.best = _manager(
        os.path.join(self.workdir, "best"),
        max_to_keep=1,
        create=True,
        best_fn=lambda m: m[best_metric],
        best_mode=best_mode,
      )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    """Saves asynchronously; the next save or `wait` finishes it."""
    self.latest.save(step, args=_save_args(state, meta))

  def save_if_best(self, step: int, state, meta: dict, metrics: dict) -> None:
    if self.best is not None and self.best_metric in metrics:
      self.best.save(step, args=_save_args(state, meta), metrics={self.best_metric: float(metrics[self.best_metric])})

  def restore_latest(self, abstract_state):
    """(state, meta) of the newest complete checkpoint, or None when there is none."""
    step = self.latest.latest_step()
    return None if step is None else restore(self.latest, step, abstract_state)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()


def _save_args(state, meta):
  return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores (state, meta); a shape mismatch names the first parameter that differs."""
  stored = manager.item_metadata(step)["state"]
  _check_shapes(stored, abstract_state, os.path.join(str(manager.directory), str(step)))
  restored = manager.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
  )
  return restored["state"], restored["meta"]


def _name(path) -> str:
  """'params/Conv_0/kernel' for a tree path, whether its keys are dict keys or dataclass fields."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _check_shapes(stored, abstract_state, where: str) -> None:
  stored = getattr(stored, "tree", stored)
  stored_leaves = {_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    name = _name(path)
    if name not in stored_leaves:
      raise CheckpointError(f"checkpoint {where} has no entry {name}: it was written by a different model config")
    have = tuple(getattr(stored_leaves[name], "shape", ()))
    if have != tuple(leaf.shape):
      raise CheckpointError(
        f"checkpoint {where}: {name} has shape {have} but the config's model expects {tuple(leaf.shape)}"
      )


def _inference_checkpoint(workdir: str) -> tuple[str, int, str]:
  """(directory, step, which) of `workdir/best`, else of the newest in `workdir/checkpoints`; `which` says which
  one and why ('best', 'latest: best/ is empty', ...)."""
  reason = "no best/ folder"
  for sub in ("best", "checkpoints"):
    directory = os.path.join(os.path.abspath(workdir), sub)
    if not os.path.isdir(directory):
      continue
    manager = _manager(directory, read_only=True)
    step = manager.latest_step()
    manager.close()
    if step is not None:
      return directory, step, "best" if sub == "best" else f"latest: {reason}"
    reason = "best/ is empty"
  raise CheckpointError(f"workdir {workdir} has no checkpoint (looked in best/ and checkpoints/)")


def restore_for_inference(workdir: str, abstract_state):
  """(state, step, which) of the whole train state in `workdir/best`, else in the newest of `workdir/checkpoints`."""
  directory, step, which = _inference_checkpoint(workdir)
  manager = _manager(directory, read_only=True)
  state, _ = restore(manager, step, abstract_state)
  manager.close()
  return state, step, which


def restore_parts(workdir: str, abstract_parts: dict):
  """(parts, step, which): only the named top-level fields of the train state (e.g. {'ema_params': ...}) from
  `workdir/best`, else the newest of `workdir/checkpoints`. The rest (the optimizer state) is never read, so reading
  a model needs neither the optimizer nor its memory. A shape mismatch names the first parameter that differs."""
  directory, step, which = _inference_checkpoint(workdir)
  # Saved with StandardSave; the PyTree handler reads the same format and restores a subtree (partial_restore).
  reader = _manager(directory, state_handler=ocp.PyTreeCheckpointHandler(), read_only=True)
  _check_shapes(reader.item_metadata(step)["state"], abstract_parts, os.path.join(directory, str(step)))
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_parts)
  state = ocp.args.PyTreeRestore(item=abstract_parts, restore_args=restore_args, partial_restore=True)
  restored = reader.restore(step, args=ocp.args.Composite(state=state))
  reader.close()
  return dict(restored["state"]), step, which


EXPORT_DIR = "params"


def export_params(params, directory: str) -> None:
  """Writes EMA parameters alone (no optimizer state) to `directory/params`: a shippable model."""
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(os.path.abspath(directory), EXPORT_DIR)
  checkpointer.save(path, params, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()


def load_exported_params(directory: str, abstract_params):
  """Parameters written by `export_params`; a shape mismatch names the first parameter that differs."""
  path = os.path.join(os.path.abspath(directory), EXPORT_DIR)
  checkpointer = ocp.StandardCheckpointer()
  _check_shapes(checkpointer.metadata(path).item_metadata, abstract_params, path)
  params = checkpointer.restore(path, abstract_params)
  checkpointer.close()
  return params
