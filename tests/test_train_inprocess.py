"""One short training run in-process on TFDS mock CIFAR-10: real loader, snapshot samples on disk."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs.vp import cifar10
from score_sde import train


def tiny_cifar10_config():
  config = cifar10.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_scales=25)
  config.training.update(batch_size=4, n_iters=2, n_jitted_steps=1, log_freq=1, eval_freq=2, snapshot_freq=2,
                         snapshot_freq_for_preemption=2, snapshot_sampling=True)
  return config


def test_train_on_mock_cifar10_writes_checkpoint_and_samples(tmp_path):
  config = tiny_cifar10_config()
  with tfds.testing.mock_data(num_examples=16):
    state = train.train(config, str(tmp_path))
  assert int(state.step) == 2
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  folder = tmp_path / "samples" / "iter_2"
  samples = np.load(folder / "samples.npz")["samples"]
  assert samples.shape == (4, 8, 8, 3) and samples.dtype == np.uint8
  assert Image.open(folder / "samples.png").size[0] > 8
  assert (2, "samples") in train.logged_tags(str(tmp_path))  # the snapshot's grid, as a TensorBoard image
  # Killed after the snapshot but before its samples: the rerun (training already finished) draws them, the
  # same images.
  png = (folder / "samples.png").read_bytes()
  for name in ("samples.npz", "samples.png"):
    os.remove(folder / name)
  with tfds.testing.mock_data(num_examples=16):
    train.train(config, str(tmp_path))
  np.testing.assert_array_equal(np.load(folder / "samples.npz")["samples"], samples)
  assert (folder / "samples.png").read_bytes() == png


def test_bad_training_frequencies_are_refused():
  config = tiny_cifar10_config()
  config.training.n_jitted_steps = 5
  config.training.log_freq = 7
  with pytest.raises(ValueError, match=r"training.log_freq=7 must be a positive multiple of training.n_jitted_steps=5"):
    train.check_training_config(config)

