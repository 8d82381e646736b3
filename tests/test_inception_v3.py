"""The Flax ImageNet Inception-v3 (TF-slim) against Keras' InceptionV3, its checkpoint conversion and weight files.

The oracle is `tf.keras.applications.InceptionV3(weights=None, include_top=False, pooling='avg')`, which builds
TF-slim's architecture (same branches in the same order, batch norm with scale=False and epsilon 1e-3,
convolutions without bias, SAME average pools that exclude the padding, average pooling in Mixed_7c, global
average pooling). The layer table below is written from TF-slim's nets/inception_v3.py, with its checkpoint
variable names; it shares no code with `score_sde.inception_v3`. Random weights (and batch-norm statistics) go
into a TF-slim style checkpoint (the V1 single-file format of the released inception_v3.ckpt), through the
conversion script, into an .npz and the Flax network, and the same values into the Keras model.
"""
import importlib.util
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from score_sde import inception_v3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_script():
  spec = importlib.util.spec_from_file_location("convert_inception_v3_weights",
                                                os.path.join(ROOT, "scripts", "convert_inception_v3_weights.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------------- TF-slim layer table
def slim_layers():
  """[(checkpoint scope, HWIO kernel shape)] of the 94 conv + batch-norm layers, in the order slim builds them."""
  layers = []

  def add(scope, kh, kw, cin, cout):
    layers.append((f"InceptionV3/{scope}", (kh, kw, cin, cout)))

  add("Conv2d_1a_3x3", 3, 3, 3, 32)
  add("Conv2d_2a_3x3", 3, 3, 32, 32)
  add("Conv2d_2b_3x3", 3, 3, 32, 64)
  add("Conv2d_3b_1x1", 1, 1, 64, 80)
  add("Conv2d_4a_3x3", 3, 3, 80, 192)
  cin = 192
  for block, pool, b1 in (("Mixed_5b", 32, ("Conv2d_0a_1x1", "Conv2d_0b_5x5")),
                          ("Mixed_5c", 64, ("Conv2d_0b_1x1", "Conv_1_0c_5x5")),
                          ("Mixed_5d", 64, ("Conv2d_0a_1x1", "Conv2d_0b_5x5"))):
    add(f"{block}/Branch_0/Conv2d_0a_1x1", 1, 1, cin, 64)
    add(f"{block}/Branch_1/{b1[0]}", 1, 1, cin, 48)
    add(f"{block}/Branch_1/{b1[1]}", 5, 5, 48, 64)
    add(f"{block}/Branch_2/Conv2d_0a_1x1", 1, 1, cin, 64)
    add(f"{block}/Branch_2/Conv2d_0b_3x3", 3, 3, 64, 96)
    add(f"{block}/Branch_2/Conv2d_0c_3x3", 3, 3, 96, 96)
    add(f"{block}/Branch_3/Conv2d_0b_1x1", 1, 1, cin, pool)
    cin = 64 + 64 + 96 + pool
  add("Mixed_6a/Branch_0/Conv2d_1a_1x1", 3, 3, cin, 384)
  add("Mixed_6a/Branch_1/Conv2d_0a_1x1", 1, 1, cin, 64)
  add("Mixed_6a/Branch_1/Conv2d_0b_3x3", 3, 3, 64, 96)
  add("Mixed_6a/Branch_1/Conv2d_1a_1x1", 3, 3, 96, 96)
  cin = 384 + 96 + cin
  for block, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    add(f"{block}/Branch_0/Conv2d_0a_1x1", 1, 1, cin, 192)
    add(f"{block}/Branch_1/Conv2d_0a_1x1", 1, 1, cin, c)
    add(f"{block}/Branch_1/Conv2d_0b_1x7", 1, 7, c, c)
    add(f"{block}/Branch_1/Conv2d_0c_7x1", 7, 1, c, 192)
    add(f"{block}/Branch_2/Conv2d_0a_1x1", 1, 1, cin, c)
    add(f"{block}/Branch_2/Conv2d_0b_7x1", 7, 1, c, c)
    add(f"{block}/Branch_2/Conv2d_0c_1x7", 1, 7, c, c)
    add(f"{block}/Branch_2/Conv2d_0d_7x1", 7, 1, c, c)
    add(f"{block}/Branch_2/Conv2d_0e_1x7", 1, 7, c, 192)
    add(f"{block}/Branch_3/Conv2d_0b_1x1", 1, 1, cin, 192)
  add("Mixed_7a/Branch_0/Conv2d_0a_1x1", 1, 1, cin, 192)
  add("Mixed_7a/Branch_0/Conv2d_1a_3x3", 3, 3, 192, 320)
  add("Mixed_7a/Branch_1/Conv2d_0a_1x1", 1, 1, cin, 192)
  add("Mixed_7a/Branch_1/Conv2d_0b_1x7", 1, 7, 192, 192)
  add("Mixed_7a/Branch_1/Conv2d_0c_7x1", 7, 1, 192, 192)
  add("Mixed_7a/Branch_1/Conv2d_1a_3x3", 3, 3, 192, 192)
  cin = 320 + 192 + cin
  for block, b1_3x1 in (("Mixed_7b", "Conv2d_0b_3x1"), ("Mixed_7c", "Conv2d_0c_3x1")):
    add(f"{block}/Branch_0/Conv2d_0a_1x1", 1, 1, cin, 320)
    add(f"{block}/Branch_1/Conv2d_0a_1x1", 1, 1, cin, 384)
    add(f"{block}/Branch_1/Conv2d_0b_1x3", 1, 3, 384, 384)
    add(f"{block}/Branch_1/{b1_3x1}", 3, 1, 384, 384)
    add(f"{block}/Branch_2/Conv2d_0a_1x1", 1, 1, cin, 448)
    add(f"{block}/Branch_2/Conv2d_0b_3x3", 3, 3, 448, 384)
    add(f"{block}/Branch_2/Conv2d_0c_1x3", 1, 3, 384, 384)
    add(f"{block}/Branch_2/Conv2d_0d_3x1", 3, 1, 384, 384)
    add(f"{block}/Branch_3/Conv2d_0b_1x1", 1, 1, cin, 192)
    cin = 320 + 768 + 768 + 192
  assert len(layers) == 94 and cin == 2048
  return layers


def _random_slim_tensors(seed):
  """He-normal kernels, random betas and batch-norm statistics for every layer (so every tensor matters)."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for scope, shape in slim_layers():
    fan_in = shape[0] * shape[1] * shape[2]
    c = shape[3]
    tensors[f"{scope}/weights"] = (rng.standard_normal(shape) * (2.0 / fan_in) ** 0.5).astype(np.float32)
    tensors[f"{scope}/BatchNorm/beta"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
    tensors[f"{scope}/BatchNorm/moving_mean"] = (0.2 * rng.standard_normal(c)).astype(np.float32)
    tensors[f"{scope}/BatchNorm/moving_variance"] = (0.5 + rng.random(c)).astype(np.float32)
  return tensors


# What the released checkpoint holds besides the feature network: the step and both classifiers.
EXTRAS = {"global_step": np.array(1000, np.int64),
          "InceptionV3/Logits/Conv2d_1c_1x1/weights": np.zeros((1, 1, 2048, 1001), np.float32),
          "InceptionV3/Logits/Conv2d_1c_1x1/biases": np.zeros(1001, np.float32),
          "InceptionV3/AuxLogits/Conv2d_1b_1x1/weights": np.zeros((1, 1, 768, 128), np.float32),
          "InceptionV3/AuxLogits/Conv2d_1b_1x1/BatchNorm/beta": np.zeros(128, np.float32)}


def _write_v1_checkpoint(path, tensors):
  """A TF-slim style checkpoint (graph-mode Saver, V1 format: one file, like inception_v3.ckpt)."""
  graph = tf.Graph()
  with graph.as_default():
    feeds = {name: tf.compat.v1.placeholder(tf.as_dtype(v.dtype), v.shape) for name, v in tensors.items()}
    variables = {name: tf.compat.v1.Variable(feeds[name], name=name) for name in tensors}
    saver = tf.compat.v1.train.Saver(variables, write_version=tf.compat.v1.train.SaverDef.V1)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer(), {feeds[n]: v for n, v in tensors.items()})
      saver.save(sess, path, write_meta_graph=False, write_state=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inception_v3")
  tensors = _random_slim_tensors(seed=0)
  ckpt, npz = str(folder / "inception_v3.ckpt"), str(folder / "inception_v3_imagenet.npz")
  _write_v1_checkpoint(ckpt, dict(tensors, **EXTRAS))
  assert os.path.isfile(ckpt)  # V1: a single file, no .index
  assert _load_script().convert(ckpt, npz) == (376, len(EXTRAS))
  return tensors, npz


# ------------------------------------------------------------------------------------- Keras oracle
def _creation_index(layer):
  match = re.search(r"_(\d+)$", layer.name)
  return int(match.group(1)) if match else 0


def _keras_inception(tensors, height, width):
  """Keras' InceptionV3 (TF-slim's architecture) with the checkpoint's tensors, layer by layer in build order."""
  model = tf.keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                            input_shape=(height, width, 3))
  convs = sorted((l for l in model.layers if isinstance(l, tf.keras.layers.Conv2D)), key=_creation_index)
  norms = sorted((l for l in model.layers if isinstance(l, tf.keras.layers.BatchNormalization)),
                 key=_creation_index)
  assert len(convs) == len(norms) == 94
  for (scope, shape), conv, norm in zip(slim_layers(), convs, norms):
    assert tuple(conv.kernel.shape) == shape, (scope, conv.name)
    assert not conv.use_bias and not norm.scale and norm.center and norm.epsilon == 1e-3
    conv.set_weights([tensors[f"{scope}/weights"]])
    norm.set_weights([tensors[f"{scope}/BatchNorm/{k}"] for k in ("beta", "moving_mean", "moving_variance")])
  return model


def _rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("height,width", [(107, 91), (75, 75)])
def test_flax_matches_keras_inception_v3(converted, height, width):
  tensors, npz = converted
  rng = np.random.default_rng(1)
  rows, cols = np.linspace(0, 255, height)[:, None], np.linspace(0, 255, width)[None, :]
  smooth = np.stack(np.broadcast_arrays(rows, cols, 255 - cols), -1)  # one smooth image, one noise
  images = np.stack([smooth, rng.integers(0, 256, (height, width, 3))]).astype(np.uint8)
  ref = _keras_inception(tensors, height, width)(images.astype(np.float32) / 127.5 - 1.0, training=False).numpy()
  out = inception_v3.get_inception_v3_fn(inception_v3.load_variables(npz))(jnp.asarray(images))
  assert set(out) == {"pool_3"} and out["pool_3"].shape == (2, 2048) and ref.shape == (2, 2048)
  assert np.std(ref) > 1e-2 and np.std(ref[0] - ref[1]) > 1e-3  # a live network that tells the images apart
  assert _rel_err(out["pool_3"], ref) < 1e-5  # float32 round-off (about 1e-6 here)


def test_preprocess_keeps_the_size_and_maps_to_minus_one_one():
  x = np.random.default_rng(0).integers(0, 256, (2, 80, 96, 3)).astype(np.uint8)
  out = np.asarray(inception_v3.preprocess(jnp.asarray(x)))
  assert out.shape == (2, 80, 96, 3)  # no resize
  np.testing.assert_allclose(out, x / 255.0 * 2 - 1, atol=1e-6)
  np.testing.assert_allclose(inception_v3.preprocess(jnp.asarray(x / 255.0, jnp.float32)), out, atol=1e-6)
  grey = x[..., :1]
  np.testing.assert_array_equal(inception_v3.preprocess(jnp.asarray(grey)),
                                inception_v3.preprocess(jnp.asarray(np.repeat(grey, 3, -1))))
  with pytest.raises(ValueError, match="at least 75x75 pixels .* got 74x96"):
    inception_v3.preprocess(jnp.zeros((1, 74, 96, 3), jnp.uint8))
  with pytest.raises(ValueError, match="1 or 3"):
    inception_v3.preprocess(jnp.zeros((1, 80, 80, 4), jnp.uint8))


def test_variable_names_are_the_checkpoints():
  names = {inception_v3.slim_name(path) for path in inception_v3.expected_shapes()}
  want = {f"{scope}/{leaf}" for scope, _ in slim_layers()
          for leaf in ("weights", "BatchNorm/beta", "BatchNorm/moving_mean", "BatchNorm/moving_variance")}
  assert names == want and len(names) == 376
  shapes = {inception_v3.slim_name(p): s for p, s in inception_v3.expected_shapes().items()}
  assert all(shapes[f"{scope}/weights"] == shape for scope, shape in slim_layers())


# ------------------------------------------------------------------------------------ conversion errors
def test_conversion_rejects_missing_mis_shaped_and_foreign_tensors(converted):
  tensors, _ = converted
  missing = dict(tensors)
  del missing["InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/BatchNorm/moving_variance"]
  with pytest.raises(ValueError, match=r"lacks 'InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/BatchNorm/moving_var"):
    inception_v3.variables_from_slim(missing)
  bad = dict(tensors, **{"InceptionV3/Mixed_7c/Branch_1/Conv2d_0c_3x1/weights": np.zeros((1, 3, 384, 384))})
  with pytest.raises(ValueError, match=r"Conv2d_0c_3x1/weights' has shape \(1, 3, 384, 384\), expected \(3, 1, 384, "
                                       r"384\)"):
    inception_v3.variables_from_slim(bad)
  gamma = dict(tensors, **{"InceptionV3/Conv2d_1a_3x3/BatchNorm/gamma": np.ones(32, np.float32)})
  with pytest.raises(ValueError, match=r"does not have, e.g. \['InceptionV3/Conv2d_1a_3x3/BatchNorm/gamma'\]"):
    inception_v3.variables_from_slim(gamma)
  nan = dict(tensors, **{"InceptionV3/Conv2d_1a_3x3/BatchNorm/beta": np.full(32, np.nan, np.float32)})
  with pytest.raises(ValueError, match="not finite"):
    inception_v3.variables_from_slim(nan)
  # The classifiers, the step and slots under a used variable's name are skipped.
  slots = {"InceptionV3/Conv2d_1a_3x3/weights/ExponentialMovingAverage": np.zeros((3, 3, 3, 32), np.float32)}
  flat = inception_v3.variables_from_slim(dict(tensors, **EXTRAS, **slots))
  np.testing.assert_array_equal(flat["params"]["Conv2d_1a_3x3"]["conv"]["kernel"],
                                tensors["InceptionV3/Conv2d_1a_3x3/weights"])


def test_script_errors(tmp_path):
  script = _load_script()
  with pytest.raises(SystemExit, match="does not exist; download http://download.tensorflow.org/models/inception_v3_"):
    script.main(["--ckpt", str(tmp_path / "inception_v3.ckpt"), "--out", str(tmp_path / "x.npz")])
  with pytest.raises(SystemExit, match="is the archive: unpack it"):
    script.main(["--ckpt", str(tmp_path / "inception_v3_2016_08_28.tar.gz"), "--out", str(tmp_path / "x.npz")])
  (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
  with pytest.raises(SystemExit, match="not a readable TensorFlow checkpoint"):
    script.main(["--ckpt", str(tmp_path / "junk.ckpt"), "--out", str(tmp_path / "x.npz")])
  # A V2 checkpoint (prefix + .index) without the network's tensors: read, then refused by name.
  tf.raw_ops.SaveV2(prefix=str(tmp_path / "other"), tensor_names=["global_step"], shape_and_slices=[""],
                    tensors=[np.array(1, np.int64)])
  with pytest.raises(SystemExit, match="lacks 'InceptionV3/Conv2d_1a_3x3/BatchNorm/moving_mean'"):
    script.main(["--ckpt", str(tmp_path / "other"), "--out", str(tmp_path / "x.npz")])
  assert not (tmp_path / "x.npz").exists()


def test_weight_file_errors(tmp_path, converted):
  _, npz = converted
  with pytest.raises(ValueError, match=r"eval.inception_v3_path is not set: download http://download.tensorflow"):
    inception_v3.resolve_path("")
  with pytest.raises(ValueError, match=r"do not exist: download .*convert_inception_v3_weights.py"):
    inception_v3.load_variables(str(tmp_path / "missing.npz"))
  (tmp_path / "inception_v3.ckpt").write_bytes(b"")
  with pytest.raises(ValueError, match=r"eval.inception_v3_path=.* is the TF-slim checkpoint: download"):
    inception_v3.load_variables(str(tmp_path / "inception_v3.ckpt"))
  (tmp_path / "broken.npz").write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="unreadable"):
    inception_v3.load_variables(str(tmp_path / "broken.npz"))
  with np.load(npz) as data:
    stored = dict(data)
  partial = dict(stored)
  del partial["batch_stats/Mixed_6e/Branch_2/Conv2d_0e_1x7/BatchNorm/var"]
  np.savez(tmp_path / "partial.npz", **partial)
  with pytest.raises(ValueError, match="lack batch_stats/Mixed_6e/Branch_2/Conv2d_0e_1x7/BatchNorm/var"):
    inception_v3.load_variables(str(tmp_path / "partial.npz"))
  np.savez(tmp_path / "extra.npz", **stored, **{"params/fc/kernel": np.zeros((2048, 1008), np.float32)})
  with pytest.raises(ValueError, match="unknown tensors"):
    inception_v3.load_variables(str(tmp_path / "extra.npz"))


def test_url_without_network_fails_clearly(tmp_path, monkeypatch):
  monkeypatch.setenv("SCORE_SDE_CACHE", str(tmp_path))
  with pytest.raises(ValueError, match="could not download eval.inception_v3_path="):
    inception_v3.resolve_path("http://127.0.0.1:9/inception_v3_imagenet.npz")  # port 9 (discard): refused at once


# ------------------------------------------------------------------------------ selection by resolution
def test_feature_fn_at_256_px_is_the_imagenet_inception_v3(converted):
  from configs import default_lsun_configs  # pylint: disable=import-outside-toplevel
  from score_sde import evaluation  # pylint: disable=import-outside-toplevel

  _, npz = converted
  config = default_lsun_configs.get_default_configs()
  assert config.data.image_size == 256
  with pytest.raises(ValueError, match="eval.inception_v3_path is not set"):
    evaluation.get_feature_fn(config)  # not eval.inception_path: the FID Inception is not used at 256 px
  config.eval.inception_v3_path = npz
  images = np.random.default_rng(2).integers(0, 256, (3, 256, 256, 3)).astype(np.uint8)
  feature_fn = evaluation.get_feature_fn(config, batch_size=2)  # chunks of 2: (2, 1 + 1 padding)
  out = feature_fn(images)
  assert feature_fn.network == evaluation.IMAGENET_INCEPTION_V3 == "imagenet_inception_v3"
  assert out["pool_3"].shape == (3, 2048) and out["pool_3"].dtype == np.float32
  assert out["logits"].shape == (3, 0)  # no classifier: no Inception Score
  direct = inception_v3.get_inception_v3_fn(inception_v3.load_variables(npz))(jnp.asarray(images[:2]))
  np.testing.assert_allclose(out["pool_3"][:2], direct["pool_3"], rtol=1e-6, atol=1e-6)


def test_feature_network_follows_the_2021_rule_and_the_override():
  from configs import default_celeba_configs, default_cifar10_configs, default_lsun_configs  # pylint: disable=import-outside-toplevel
  from configs.vp import digits  # pylint: disable=import-outside-toplevel
  from score_sde import evaluation  # pylint: disable=import-outside-toplevel

  cifar, celeba, lsun = (m.get_default_configs() for m in (default_cifar10_configs, default_celeba_configs,
                                                          default_lsun_configs))
  assert [evaluation.feature_network(c) for c in (cifar, celeba, lsun, digits.get_config())] == [
      "fid_inception", "fid_inception", "imagenet_inception_v3", "digits_classifier"]
  lsun.data.image_size = 128
  assert evaluation.feature_network(lsun) == "fid_inception"
  lsun.data.image_size = 1024
  assert evaluation.feature_network(lsun) == "imagenet_inception_v3"
  lsun.eval.feature_network = "fid_inception"
  assert evaluation.feature_network(lsun) == "fid_inception"
  assert evaluation.default_network(lsun) == "imagenet_inception_v3"
  lsun.eval.feature_network = "inception"
  with pytest.raises(ValueError, match=r"eval.feature_network='inception': use ''"):
    evaluation.feature_network(lsun)
  cifar.eval.feature_network = "imagenet_inception_v3"
  with pytest.raises(ValueError, match="at least 75 px; data.image_size=32 is smaller"):
    evaluation.get_feature_fn(cifar)
