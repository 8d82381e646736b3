"""Checkpoints over Orbax: kept snapshots plus a latest-only preemption checkpoint, restored from the newest.

Orbax writes each checkpoint into a temporary folder and renames it only once complete, so a process killed
mid-write never leaves a checkpoint that `latest_step` would pick up. Each checkpoint also records a checksum
of every array it holds (the `checksum` item beside the state's `default` one), verified on every restore, so
bytes changed after the write (a bit flip on disk, a damaged copy) are never restored silently.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CHECKSUM_VERSION = 1
_STATE, _CHECKSUM = "default", "checksum"


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
  """A checkpoint that cannot be restored into this run (different model, unreadable or corrupt files)."""


def _reason(error, limit=300):
  """The storage layer's message on one line, without its (long) tensorstore spec."""
  text = " ".join(str(error).split(" [tensorstore_spec")[0].split())
  return text if len(text) <= limit else text[:limit] + "..."


def _as_words(x):
  """The bits of array `x` as a flat uint32 vector (8-byte elements as two words, narrow ones widened)."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    return x.reshape(-1).astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size in (4, 8):
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  return jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 1: jnp.uint8}[size]).reshape(-1).astype(jnp.uint32)


@jax.jit
def _word_checksums(tree):
  """Per leaf: sum_i w_i b_i mod 2^32 over its words b_i, with odd weights w_i = (2i + 1) * 0x9E3779B1.

  Every weight is odd, so flipping any one bit (a change of +-2^k, k < 32, in one word) changes the sum:
  2^k w_i is never 0 mod 2^32. Computed where the arrays are (sharded or not); only the sums leave the device.
  """
  def leaf(x):
    words = _as_words(x)
    weights = (jax.lax.iota(jnp.uint32, words.shape[0]) * jnp.uint32(2) + jnp.uint32(1)) * jnp.uint32(0x9E3779B1)
    return jnp.sum(words * weights, dtype=jnp.uint32)
  return jax.tree_util.tree_map(leaf, tree)


def tree_checksum(tree):
  """{path: checksum} of every array of `tree` (see `_word_checksums`), as recorded beside a checkpoint."""
  sums = jax.device_get(_word_checksums(tree))
  return {_path_str(path): int(np.asarray(v)) for path, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


def _item_handlers():
  return {_STATE: ocp.StandardCheckpointHandler(), _CHECKSUM: ocp.JsonCheckpointHandler()}


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
    # The handlers are named up front so that a fresh process can read metadata before any save.
    self.snapshots = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints"),
                                           options=ocp.CheckpointManagerOptions(**options),
                                           item_handlers=_item_handlers())
    self.preemption = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints-meta"),
                                            options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
                                            item_handlers=_item_handlers())

  def latest(self):
    """(manager, step) of the newest complete checkpoint, or (None, None)."""
    candidates = [(m.latest_step(), i, m) for i, m in enumerate((self.snapshots, self.preemption))]
    candidates = [c for c in candidates if c[0] is not None]
    if not candidates:
      return None, None
    step, _, manager = max(candidates, key=lambda c: (c[0], c[1]))
    return manager, step

  def all_steps(self):
    """The steps of every complete checkpoint, kept snapshots and the preemption one, sorted."""
    return sorted(set(self.snapshots.all_steps()) | set(self.preemption.all_steps()))

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
    raise CheckpointError(f"no checkpoint of step {step} in {self.workdir}; available steps: {self.all_steps()}.")

  def _restore(self, manager, step, abstract_state):
    where = os.path.join(str(manager.directory), str(step))
    try:
      metadata = manager.item_metadata(step)
      has_checksum = _CHECKSUM in metadata.keys()  # absent from checkpoints written before checksums
      saved = _shapes(metadata[_STATE])
      if not saved:
        raise ValueError("no arrays in its metadata")
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {where} is unreadable ({type(e).__name__}: {_reason(e)}); move it out of the "
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
    items = {_STATE: ocp.args.StandardRestore(abstract_state)}
    if has_checksum:
      items[_CHECKSUM] = ocp.args.JsonRestore()
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {where} could not be restored ({type(e).__name__}: {_reason(e)}); move it out "
                            "of the workdir to start over, or restore a backup.") from e
    state = restored[_STATE]
    if has_checksum:
      self._verify(where, state, restored[_CHECKSUM])
    return state

  def _verify(self, where, state, record):
    """Refuses a restored state whose arrays differ from the checksums recorded when it was written."""
    recorded = record.get("leaves", {}) if isinstance(record, dict) else {}
    found = tree_checksum(state)
    bad = sorted(k for k in set(recorded) | set(found) if recorded.get(k) != found.get(k))
    if bad:
      raise CheckpointError(
          f"checkpoint {where} is corrupt: {len(bad)} of its {len(found)} arrays (e.g. {bad[0]}) differ from the "
          f"checksums recorded when it was written; use an earlier step (steps here: {self.all_steps()}; move this "
          "one out of the workdir to resume from the one before) or restore a backup.")

  def save(self, step, state, snapshot):
    manager = self.snapshots if snapshot else self.preemption
    record = {"version": CHECKSUM_VERSION, "leaves": tree_checksum(state)}
    manager.save(int(step), args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                                        _CHECKSUM: ocp.args.JsonSave(record)}), force=True)

  def wait(self):
    self.snapshots.wait_until_finished()
    self.preemption.wait_until_finished()

  def close(self):
    self.snapshots.close()
    self.preemption.close()
