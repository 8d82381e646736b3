"""Released checkpoints through the modes: `eval.pretrained` for sample / eval, `training.init_from` for train.

A tiny digits run is written at step 2 in the 2021 Flax layout (its params, EMA and Adam moments); sampling and
evaluating that file must give what the run's own checkpoint gives, and training on from it must reach the same
parameters as the run continued in its own workdir (same data position, rng and optimizer state).
"""
import jax
import numpy as np
import optax
import pytest

from configs.vp import digits
from score_sde import evaluate, generate, pretrained, train
from tests import test_pretrained

# Its own group: the module fixture is computed once, on one worker, beside the "train" group.
pytestmark = pytest.mark.xdist_group("pretrained_modes")


def tiny_config(n_iters):
  config = digits.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=25)
  config.training.update(batch_size=4, n_iters=n_iters, n_jitted_steps=2, log_freq=2, eval_freq=2, snapshot_freq=2,
                         snapshot_freq_for_preemption=2, snapshot_sampling=False)
  config.eval.update(batch_size=4, num_samples=4, begin_ckpt=1, end_ckpt=1, enable_loss=True, enable_bpd=False,
                     enable_vlb=False, enable_sampling=False, ckpt_wait_secs=0)
  return config


def _adam(opt_state):
  is_adam = lambda n: isinstance(n, optax.ScaleByAdamState)
  return [n for n in jax.tree_util.tree_leaves(opt_state, is_leaf=is_adam) if is_adam(n)][0]


def _write_2021(path, state):
  """The run's state as the 2021 code's flax `save_checkpoint` wrote a `State` (flax.optim Adam moments)."""
  np_tree = lambda t: jax.tree_util.tree_map(np.asarray, jax.device_get(t))
  adam = _adam(state.opt_state)
  test_pretrained.write_2021(path, test_pretrained.state_2021(np_tree(state.params), np_tree(state.ema_params),
                                                              np_tree(adam.mu), np_tree(adam.nu), int(state.step)))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """(workdir of a run trained to step 4 with checkpoints at 2 and 4, 2021-format file of its step 2)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train(tiny_config(2), workdir)
  path = str(tmp_path_factory.mktemp("release") / "checkpoint_1")
  _write_2021(path, pretrained.load_train_state(workdir, tiny_config(2)))
  train.train(tiny_config(4), workdir)
  return workdir, path


def test_training_runs_exactly_n_iters_and_checkpoint_k_holds_step_k_times_snapshot_freq(released):
  """A deliberate departure: the 2021 loop `range(0, n_iters + 1, n_jitted_steps)` ran n_iters + n_jitted_steps
  steps and its checkpoint k held step k * snapshot_freq + n_jitted_steps. Here n_iters is the step count."""
  from score_sde import checkpointing  # pylint: disable=import-outside-toplevel
  ckpts = checkpointing.Checkpoints(released[0], read_only=True)
  try:
    assert sorted(ckpts.snapshots.all_steps()) == [2, 4]
  finally:
    ckpts.close()
  assert int(pretrained.load_train_state(released[0], tiny_config(4)).step) == 4


def test_sample_and_eval_of_a_released_file_equal_those_of_its_run(released, tmp_path):
  workdir, path = released
  own = tiny_config(4)
  own.eval.ckpt_id = 2
  from_file = tiny_config(4)
  from_file.eval.pretrained = path
  a = generate.sample(own, workdir)
  b = generate.sample(from_file, str(tmp_path))
  assert b.parent.name == "step_2" and b.name == a.name  # the file's own step; the same parameters, the same work
  np.testing.assert_array_equal(np.load(b / "samples_0.npz")["samples"], np.load(a / "samples_0.npz")["samples"])
  report_own = evaluate.evaluate(tiny_config(4), workdir, "eval_own")[2]
  report_file = evaluate.evaluate(from_file, str(tmp_path), "eval_file")[2]
  assert report_file["eval_loss"] == report_own["eval_loss"]


def test_training_from_a_released_file_continues_the_run(released, tmp_path):
  workdir, path = released
  config = tiny_config(4)
  config.training.init_from = path
  state = train.train(config, str(tmp_path))
  reference = pretrained.load_train_state(workdir, tiny_config(4))  # the run continued in its own workdir
  assert int(state.step) == int(reference.step) == 4
  for got, want in zip(jax.tree_util.tree_leaves((state.params, state.ema_params, state.opt_state)),
                       jax.tree_util.tree_leaves((reference.params, reference.ema_params, reference.opt_state))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
