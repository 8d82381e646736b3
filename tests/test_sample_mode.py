"""`--mode sample`: rounds of uint8 shards from a checkpoint's EMA parameters, resumable round by round."""
import os

import numpy as np
import pytest

from configs.vp import digits
from score_sde import checkpointing, generate, train, train_state
from tests import train_utils


def tiny_config():
  config = digits.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=25)
  config.training.update(batch_size=4, n_iters=2, log_freq=1, eval_freq=2, snapshot_freq=2,
                         snapshot_freq_for_preemption=2, snapshot_sampling=False)
  config.eval.update(batch_size=4, num_samples=10)
  return config


def _round_floats(config, workdir, r):
  """Round r of `--mode sample` recomputed as floats in [0, 1], the way generate.sample draws it."""
  import jax  # pylint: disable=import-outside-toplevel
  from score_sde import config_checks, datasets, parallel, sampling  # pylint: disable=import-outside-toplevel
  from score_sde.models import utils as mutils  # pylint: disable=import-outside-toplevel
  sde, model = config_checks.validate_config(config)
  mesh = parallel.make_mesh()
  _, params = train_state.restore_ema_params(config, workdir, model, mesh)
  shape = (config.eval.batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler = sampling.get_sampling_fn(config, sde, mutils.get_score_fn(sde, model, continuous=True), shape,
                                     datasets.get_data_inverse_scaler(config), sde.default_sampling_eps,
                                     sharding=parallel.sampler_sharding(mesh))
  return np.asarray(jax.jit(sampler)(jax.random.fold_in(jax.random.PRNGKey(config.seed), r), params)[0])


def test_sample_mode_writes_shards_and_resumes(tmp_path):
  config = tiny_config()
  workdir = str(tmp_path)
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint in .*: train first"):
    generate.sample(config, workdir)
  train.train(config, workdir)
  folder = generate.sample(config, workdir)
  assert folder.parent.name == "step_2" and folder.name.startswith("pc-")
  shards = [np.load(folder / f"samples_{r}.npz")["samples"] for r in range(3)]
  assert [s.shape for s in shards] == [(4, 8, 8, 1), (4, 8, 8, 1), (2, 8, 8, 1)]  # exactly num_samples
  assert all(s.dtype == np.uint8 for s in shards) and (folder / "samples_0.png").exists()
  # Images are the 2021 truncation of the sampler's floats, not their rounding.
  floats = _round_floats(config, workdir, 0)
  np.testing.assert_array_equal(shards[0], np.clip(floats * 255.0, 0, 255).astype(np.uint8))
  assert np.any(shards[0] != np.clip(floats * 255.0 + 0.5, 0, 255).astype(np.uint8))
  # An interrupted run: a missing round is redrawn identically; finished rounds are not touched.
  os.remove(folder / "samples_1.npz")
  before = os.path.getmtime(folder / "samples_0.npz")
  generate.sample(config, workdir)
  np.testing.assert_array_equal(np.load(folder / "samples_1.npz")["samples"], shards[1])
  assert os.path.getmtime(folder / "samples_0.npz") == before
  # Finished rounds stand in only for the same work: another sampler or batch size draws anew into a folder
  # of its own (before, both printed "all rounds already there" and returned the first run's images).
  other = tiny_config()
  other.sampling.predictor = "reverse_diffusion"
  other_folder = generate.sample(other, workdir)
  assert other_folder != folder and other_folder.parent == folder.parent
  assert np.any(np.load(other_folder / "samples_0.npz")["samples"] != shards[0])
  other = tiny_config()
  other.eval.batch_size = 5
  assert generate.sample(other, workdir) not in (folder, other_folder)
  assert os.path.getmtime(folder / "samples_0.npz") == before  # the first run's rounds are untouched
  # More samples of the same work: full rounds are reused, the short last one is redrawn in full.
  more = tiny_config()
  more.eval.num_samples = 12
  assert generate.sample(more, workdir) == folder
  assert os.path.getmtime(folder / "samples_0.npz") == before
  last = np.load(folder / "samples_2.npz")["samples"]
  assert last.shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(last[:2], shards[2])
  config.eval.ckpt_id = 7
  with pytest.raises(checkpointing.CheckpointError, match=r"no checkpoint of step 7 .*available steps: \[2\]"):
    generate.sample(config, workdir)
  # Bytes of the checkpoint changed after it was written (bit flips in its data files): refused in one line,
  # nothing already written is touched (before checksums this sampled from garbage parameters, exit 0).
  config.eval.ckpt_id = -1
  train_utils.flip_a_bit_in_each_data_file(os.path.join(workdir, "checkpoints", "2"), 0x04)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"checkpoints/2 (is corrupt|is unreadable|could not be restored)") as info:
    generate.sample(config, workdir)
  assert "\n" not in str(info.value) and len(str(info.value)) < 800
  np.testing.assert_array_equal(np.load(folder / "samples_1.npz")["samples"], shards[1])
