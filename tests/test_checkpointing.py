"""Checkpoint manager: newest of snapshot / preemption, half-written folders ignored, mismatches refused."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import checkpointing
from tests import train_utils


def state(scale=1.0, width=3):
  return {"params": {"w": jnp.full((width, 2), scale)}, "step": jnp.array(0)}


def test_latest_picks_the_newest_of_both_kinds(tmp_path):
  ckpts = checkpointing.Checkpoints(str(tmp_path), async_save=False)
  assert ckpts.latest() == (None, None) and ckpts.restore_latest(jax.eval_shape(state)) is None
  ckpts.save(10, state(1.0), snapshot=True)
  ckpts.save(15, state(2.0), snapshot=False)
  ckpts.save(20, state(3.0), snapshot=False)
  ckpts.wait()
  assert ckpts.preemption.all_steps() == [20]  # preemption checkpoints keep only the latest
  manager, step = ckpts.latest()
  assert step == 20 and manager is ckpts.preemption
  restored = ckpts.restore_latest(jax.eval_shape(state))
  np.testing.assert_array_equal(restored["params"]["w"], 3.0)
  ckpts.close()


def test_half_written_checkpoint_is_never_restored(tmp_path):
  ckpts = checkpointing.Checkpoints(str(tmp_path), async_save=False)
  ckpts.save(8, state(1.0), snapshot=False)
  ckpts.wait()
  ckpts.close()
  # What a process killed mid-save leaves behind: Orbax's temporary folder, never renamed into place.
  partial = tmp_path / "checkpoints-meta" / "12.orbax-checkpoint-tmp-1700000000"
  (partial / "default").mkdir(parents=True)
  (partial / "default" / "garbage").write_bytes(os.urandom(64))
  ckpts = checkpointing.Checkpoints(str(tmp_path), async_save=False)
  assert ckpts.latest()[1] == 8
  np.testing.assert_array_equal(ckpts.restore_latest(jax.eval_shape(state))["params"]["w"], 1.0)
  ckpts.close()


def test_different_model_is_refused_with_a_clear_message(tmp_path):
  ckpts = checkpointing.Checkpoints(str(tmp_path), async_save=False)
  ckpts.save(4, state(), snapshot=True)
  ckpts.wait()
  with pytest.raises(checkpointing.CheckpointError, match=r"holds a different model than this config: 1 shapes "
                     r"differ \(e.g. params/w: \(3, 2\) there, \(5, 2\) here\)"):
    ckpts.restore_latest(jax.eval_shape(lambda: state(width=5)))
  with pytest.raises(checkpointing.CheckpointError, match="parameters missing"):
    ckpts.restore_latest(jax.eval_shape(lambda: {**state(), "extra": jnp.zeros(2)}))
  ckpts.close()


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
  ckpts = checkpointing.Checkpoints(str(tmp_path), async_save=False)
  ckpts.save(4, state(), snapshot=True)
  ckpts.wait()
  ckpts.close()
  for root, _, files in os.walk(tmp_path / "checkpoints" / "4"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")
  ckpts = checkpointing.Checkpoints(str(tmp_path), async_save=False)
  with pytest.raises(checkpointing.CheckpointError, match=r"checkpoint .*4 (is unreadable|could not be restored)"):
    ckpts.restore_latest(jax.eval_shape(state))
  ckpts.close()


def test_bit_flips_in_the_data_are_never_restored_silently(tmp_path):
  """Bytes changed after the write: every restore either raises CheckpointError or returns the exact arrays
  (a flip in bytes no array reads). Before checksums, a flip in the data restored changed numbers."""
  original = {"params": {"w": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64) / 7.0},
              "step": jnp.array(3, jnp.int32)}
  ckpts = checkpointing.Checkpoints(str(tmp_path / "w"), async_save=False)
  ckpts.save(4, original, snapshot=True)
  ckpts.wait()
  ckpts.close()
  data_file = train_utils.checkpoint_data_files(tmp_path / "w" / "checkpoints" / "4")[0]
  size = os.path.getsize(data_file)
  outcomes = []
  for k, position in enumerate(np.linspace(size // 8, size - 1, 6).astype(int)):
    work = tmp_path / f"copy_{k}"
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.copytree(tmp_path / "w", work)
    flipped = os.path.join(work, os.path.relpath(data_file, tmp_path / "w"))
    data = bytearray(open(flipped, "rb").read())
    data[position] ^= 1 << (k % 8)
    with open(flipped, "wb") as f:
      f.write(bytes(data))
    ckpts = checkpointing.Checkpoints(str(work), read_only=True)
    try:
      restored = ckpts.restore_latest(jax.eval_shape(lambda: original))
      np.testing.assert_array_equal(restored["params"]["w"], original["params"]["w"])
      outcomes.append("intact")
    except checkpointing.CheckpointError as e:
      assert "\n" not in str(e) and "checkpoints/4" in str(e), e
      outcomes.append("corrupt" if "is corrupt" in str(e) else "unreadable")
    finally:
      ckpts.close()
  assert "corrupt" in outcomes, outcomes  # the checksum caught flips the storage layer decoded silently


def test_the_checksum_sees_any_single_bit_flip():
  rng = np.random.default_rng(0)
  tree = {"f32": rng.normal(size=(7, 5)).astype(np.float32), "i32": rng.integers(-9, 9, 11).astype(np.int32),
          "u8": rng.integers(0, 255, 13).astype(np.uint8), "bf16": jnp.asarray(rng.normal(size=6), jnp.bfloat16),
          "flag": np.array([True, False, True])}
  reference = checkpointing.tree_checksum(tree)
  assert checkpointing.tree_checksum(jax.tree_util.tree_map(np.copy, tree)) == reference
  for name in ("f32", "i32", "u8", "bf16"):
    raw = np.array(tree[name]).reshape(-1).view(np.uint8).copy()
    for byte in range(raw.size):
      for bit in range(8):
        changed = raw.copy()
        changed[byte] ^= 1 << bit
        leaf = changed.view(np.asarray(tree[name]).dtype).reshape(np.shape(tree[name]))
        assert checkpointing.tree_checksum({**tree, name: leaf})[name] != reference[name], (name, byte, bit)
  assert checkpointing.tree_checksum({**tree, "flag": np.array([True, True, True])})["flag"] != reference["flag"]


def test_checkpoints_written_before_checksums_still_restore(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  legacy = ocp.CheckpointManager(str(tmp_path / "checkpoints"), options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False), item_handlers=ocp.StandardCheckpointHandler())
  legacy.save(6, args=ocp.args.StandardSave(state(4.0)), force=True)
  legacy.wait_until_finished()
  legacy.close()
  ckpts = checkpointing.Checkpoints(str(tmp_path), read_only=True)
  np.testing.assert_array_equal(ckpts.restore_latest(jax.eval_shape(state))["params"]["w"], 4.0)
  ckpts.close()
