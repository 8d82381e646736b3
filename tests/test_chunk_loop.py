"""The accelerator path on CPU: a chunk of n_jitted_steps as `lax.scan` (what TPUs and GPUs run) equals the same
chunk unrolled (what "auto" picks on CPU) and resumes exactly."""
import jax
import numpy as np
import pytest

from configs.vp import digits
from score_sde import train

STEPS_PER_CALL = 4


def tiny_config(chunk_loop, n_iters):
  config = digits.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), attn_resolutions=(4,), dropout=0.1)
  config.training.update(batch_size=8, n_iters=n_iters, n_jitted_steps=STEPS_PER_CALL, chunk_loop=chunk_loop,
                         log_freq=4, eval_freq=4, snapshot_freq=8, snapshot_freq_for_preemption=4,
                         snapshot_sampling=False)
  config.optim.warmup = 5
  return config


def leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.params, state.ema_params, state.opt_state))]


def test_the_path_is_chosen_by_one_function():
  assert train.chunk_loop("auto", "cpu") == "unroll"
  assert train.chunk_loop("auto", "tpu") == train.chunk_loop("auto", "gpu") == "scan"
  assert train.chunk_loop("scan", "cpu") == "scan" and train.chunk_loop("unroll", "gpu") == "unroll"
  with pytest.raises(ValueError, match=r"training.chunk_loop='while' is not one of \['auto', 'scan', 'unroll'\]"):
    train.check_training_config(tiny_config("while", 8))


def test_scan_resumed_equals_unrolled_uninterrupted(tmp_path):
  """8 steps: two scanned chunks of 4 with a restart between them (dropout on, so the per-step rng is exercised
  too) against one run of two unrolled chunks."""
  scanned, unrolled = str(tmp_path / "scan"), str(tmp_path / "unroll")
  assert int(train.train(tiny_config("scan", 4), scanned).step) == 4
  resumed = train.train(tiny_config("scan", 8), scanned)  # restores step 4, runs the second chunk
  reference = train.train(tiny_config("unroll", 8), unrolled)
  assert int(resumed.step) == int(reference.step) == 8
  for a, b in zip(leaves(resumed), leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  loss_scan, loss_unrolled = (train.logged_scalars(w, "train_loss") for w in (scanned, unrolled))
  assert sorted(loss_scan) == sorted(loss_unrolled) == [4, 8]
  np.testing.assert_allclose([loss_scan[s] for s in (4, 8)], [loss_unrolled[s] for s in (4, 8)], rtol=1e-5)
