"""Checkpoint manager: newest of snapshot / preemption, half-written folders ignored, mismatches refused."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import checkpointing


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
