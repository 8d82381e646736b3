"""Checkpoints over Orbax: kept snapshots plus a latest-only preemption checkpoint, restored from the newest.

Orbax writes each checkpoint into a temporary folder and renames it only once complete, so a process killed
mid-write never leaves a checkpoint that `latest_step` would pick up.
"""
import os

import jax
import orbax.checkpoint as ocp
from etils import epath


def _path_str(path):
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _shapes(tree):
  return {_path_str(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into this run (different model, unreadable files)."""


class Checkpoints:
  """`workdir/checkpoints` keeps every snapshot; `workdir/checkpoints-meta` keeps the latest preemption one."""

  def __init__(self, workdir, async_save=True, read_only=False):
    """read_only: for restoring only (sample / eval): nothing is created or cleaned up, so no background work
    outlives the caller (a writer's start-up clean-up of half-written checkpoints runs in a thread)."""
    self.workdir = str(epath.Path(workdir).resolve()) if "://" not in str(workdir) else str(workdir)
    if read_only:
      options = dict(create=False, cleanup_tmp_directories=False, read_only=True, enable_async_checkpointing=False)
    else:
      options = dict(create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
    # The handler is named up front so that a fresh process can read metadata before any save.
    self.snapshots = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints"),
                                           options=ocp.CheckpointManagerOptions(**options),
                                           item_handlers=ocp.StandardCheckpointHandler())
    self.preemption = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints-meta"),
                                            options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
                                            item_handlers=ocp.StandardCheckpointHandler())

  def latest(self):
    """(manager, step) of the newest complete checkpoint, or (None, None)."""
    candidates = [(m.latest_step(), i, m) for i, m in enumerate((self.snapshots, self.preemption))]
    candidates = [c for c in candidates if c[0] is not None]
    if not candidates:
      return None, None
    step, _, manager = max(candidates, key=lambda c: (c[0], c[1]))
    return manager, step

  def restore_latest(self, abstract_state):
    """The newest checkpoint restored onto `abstract_state`'s shapes and shardings, or None if there is none."""
    manager, step = self.latest()
    if manager is None:
      return None
    return self._restore(manager, step, abstract_state)

  def restore_step(self, step, abstract_state):
    """The checkpoint of `step` (a kept snapshot, or the preemption one); a clear error if there is none."""
    for manager in (self.snapshots, self.preemption):
      if step in manager.all_steps():
        return self._restore(manager, step, abstract_state)
    steps = sorted(set(self.snapshots.all_steps()) | set(self.preemption.all_steps()))
    raise CheckpointError(f"no checkpoint of step {step} in {self.workdir}; available steps: {steps}.")

  def _restore(self, manager, step, abstract_state):
    where = os.path.join(str(manager.directory), str(step))
    try:
      saved = _shapes(manager.item_metadata(step))
      if not saved:
        raise ValueError("no arrays in its metadata")
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {where} is unreadable ({type(e).__name__}: {e}); move it out of the "
                            "workdir to start over, or restore a backup.") from e
    expected = _shapes(abstract_state)
    if saved != expected:
      missing = sorted(set(expected) - set(saved))
      extra = sorted(set(saved) - set(expected))
      changed = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
      detail = (f"{len(changed)} shapes differ (e.g. {changed[0]}: {saved[changed[0]]} there, "
                f"{expected[changed[0]]} here)" if changed else
                f"{len(missing)} parameters missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})")
      raise CheckpointError(f"checkpoint {where} holds a different model than this config: {detail}; "
                            "use a new --workdir (nothing was overwritten).")
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {where} could not be restored ({type(e).__name__}: {e}); move it out "
                            "of the workdir to start over, or restore a backup.") from e

  def save(self, step, state, snapshot):
    manager = self.snapshots if snapshot else self.preemption
    manager.save(int(step), args=ocp.args.StandardSave(state), force=True)

  def wait(self):
    self.snapshots.wait_until_finished()
    self.preemption.wait_until_finished()

  def close(self):
    self.snapshots.close()
    self.preemption.close()
