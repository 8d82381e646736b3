"""The noise-conditional WideResNet classifier: the 2021 layout, per-example logits, resumable training on noisy
digits, accuracy per noise level, and refusal for another SDE."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.subvp import digits as subvp_digits
from configs.vp import digits
from score_sde import checkpointing, classifier_training, train
from score_sde.models.wideresnet import WideResNet



def _expected_count(k, blocks, in_channels=3, classes=10, emb=128):
  """WRN-(6 blocks + 4)-k parameters, counted from the architecture: embedding, stem, blocks, head."""
  n = emb + (2 * emb * 4 * emb + 4 * emb) + (4 * emb * 4 * emb + 4 * emb)  # Fourier W, Dense_0, Dense_1
  n += 9 * in_channels * 16  # init_conv, no bias
  c_in = 16
  for width in (16 * k, 32 * k, 64 * k):
    for _ in range(blocks):
      n += 2 * c_in + 9 * c_in * width + (4 * emb * width + width) + 2 * width + 9 * width * width
      c_in = width
  return n + 2 * c_in + c_in * classes + classes  # pre-pool-bn, Dense_2


def test_wrn_28_10_has_the_2021_layout_and_size():
  model = WideResNet()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,)))["params"]
  flat = traverse_util.flatten_dict(shapes, sep="/")
  assert sum(int(np.prod(v.shape)) for v in flat.values()) == _expected_count(10, 4)
  assert sorted(shapes) == ["Dense_0", "Dense_1", "Dense_2", "GaussianFourierProjection_0", "WideResnetGroup_0",
                            "WideResnetGroup_1", "WideResnetGroup_2", "init_conv", "pre-pool-bn"]
  block = shapes["WideResnetGroup_1"]["WideResnetBlock_0"]
  assert sorted(block) == ["Dense_0", "bn_2", "conv1", "conv2", "init_bn"]
  assert block["conv1"]["kernel"].shape == (3, 3, 160, 320) and "bias" not in block["conv1"]
  assert sorted(shapes["WideResnetGroup_2"]) == [f"WideResnetBlock_{i}" for i in range(4)]
  assert flat["Dense_2/kernel"].shape == (640, 10)


def test_logits_of_an_example_do_not_depend_on_its_batch():
  model = WideResNet(blocks_per_group=1, channel_multiplier=1, embedding_size=16)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  sigma = jnp.array([0.01, 0.3, 5.0])
  params = model.init(jax.random.PRNGKey(0), x, sigma)
  apply = jax.jit(model.apply)
  together = apply(params, x, sigma)
  alone = jnp.concatenate([apply(params, x[i:i + 1], sigma[i:i + 1]) for i in range(3)])
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
  # The input is standardised per image: an affine change of one image leaves its logits as they were.
  np.testing.assert_allclose(apply(params, 3.0 * x + 2.0, sigma), together, rtol=1e-4, atol=1e-4)


def tiny_config(module=digits, n_iters=20):
  config = module.get_config()
  config.data.image_size = 8
  config.classifier.update(blocks_per_group=1, channel_multiplier=1, embedding_size=16, batch_size=16,
                           n_iters=n_iters, log_freq=10, eval_freq=10, snapshot_freq=10, noise_buckets=4)
  return config


def test_training_resumes_to_the_same_parameters_reports_accuracy_per_noise_level_and_refuses_other_sdes(
    tmp_path, monkeypatch):
  """A run stopped by SIGTERM after its first step resumes to the parameters of an uninterrupted run."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  full = classifier_training.train_classifier(tiny_config(n_iters=20), straight)

  class SigtermAtOnce(train.PreemptionSignal):  # as if SIGTERM arrived during the first step

    def __enter__(self):
      self.requested = True
      return self

    def __exit__(self, *exc):
      pass

  monkeypatch.setattr(train, "PreemptionSignal", SigtermAtOnce)
  with pytest.raises(train.Preempted, match="checkpoint saved at step 1"):
    classifier_training.train_classifier(tiny_config(n_iters=20), resumed)
  monkeypatch.undo()
  again = classifier_training.train_classifier(tiny_config(n_iters=20), resumed)
  assert int(again.step) == int(full.step) == 20
  for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(os.path.join(straight, "classifier", "accuracy.json")) as f:
    history = json.load(f)
  assert [r["step"] for r in history] == [10, 20]
  buckets = history[-1]["buckets"]
  assert len(buckets) == 4 and buckets[0]["t"][0] == pytest.approx(1e-5) and buckets[-1]["t"][1] == 1.0
  assert all(0.0 <= b["accuracy"] <= 1.0 for b in buckets)
  assert buckets[0]["sigma"][0] < buckets[-1]["sigma"][1]  # the VP marginal std grows with t
  fn, params = classifier_training.load_classifier(tiny_config(), straight)
  logits = fn(params, jnp.zeros((2, 8, 8, 1)), jnp.full((2,), 0.5))
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  # Refused for a config of another SDE, for sampling and for further training alike.
  with pytest.raises(ValueError, match=r"trained for another config \(training.sde 'vpsde' there, 'subvpsde' here"):
    classifier_training.load_classifier(tiny_config(subvp_digits), straight)
  with pytest.raises(ValueError, match="trained for another config"):
    classifier_training.train_classifier(tiny_config(subvp_digits, n_iters=30), straight)
  with pytest.raises(checkpointing.CheckpointError, match="no classifier in .*--mode train_classifier"):
    classifier_training.load_classifier(tiny_config(), str(tmp_path / "empty"))
