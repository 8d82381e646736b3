"""DDPM, NCSNv2 (64/128/256) and NCSN v1: golden outputs, checkpoint trees, forward passes, bad configs.

Kept fast for a 2-core CPU: full-size networks are only traced abstractly (`jax.eval_shape`); tiny networks
get random parameters from numpy, because compiling their `init` (dozens of random initialisers) costs far
more than a forward pass. The initialisers themselves are checked on single layers.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.ve.ncsn import cifar10 as ncsn_cifar10
from configs.ve.ncsnv2 import bedroom as ncsnv2_bedroom
from configs.ve.ncsnv2 import cifar10 as ncsnv2_cifar10
from configs.vp.ddpm import cifar10 as ddpm_cifar10
from configs.vp.ddpm import cifar10_unconditional as ddpm_cifar10_uncond
from score_sde.models import ddpm, layers, ncsn, ncsn_layers, ncsnv2, utils
from tests import reference_data


def _abstract_params(model, shape, labels):
  """Parameter shapes without running (or compiling) the initialisers."""
  return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros(shape, jnp.float32),
                                           jnp.asarray(labels), train=False))["params"]


def _random_params(abstract, seed=0):
  """Random parameters with O(1) activations: fan-in scaled weights, scales near 1, small biases."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name in ("kernel", "W"):
      value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
    elif name in ("scale", "gamma", "alpha", "embedding"):
      value = 1.0 + 0.2 * rng.normal(size=shape)
    else:  # biases, beta
      value = 0.1 * rng.normal(size=shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _inputs(shape, labels, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape), jnp.asarray(labels)


def _golden_model(name):
  arrays, meta = reference_data.golden(name)
  return utils.create_model(reference_data.golden_config(meta)), arrays, meta


# ------------------------------------------------------------------------------------------------------
# 1. Golden outputs of the 2021 networks: load their parameters unchanged, reproduce their outputs.


@pytest.mark.parametrize("name,cls", [("vp_ddpm", ddpm.DDPM), ("ve_ncsnv2", ncsnv2.NCSNv2)])
def test_golden_outputs(name, cls):
  model, arrays, meta = _golden_model(name)
  assert type(model) is cls and utils.count_params(arrays["params"]) == meta["param_count"]
  assert reference_data.tree_of(arrays["params"]) == reference_data.tree_of(
      _abstract_params(model, arrays["x"].shape, arrays["labels"]))
  with jax.default_matmul_precision("highest"):
    out = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y, train=False))(
        arrays["params"], arrays["x"], arrays["labels"])
  assert out.shape == arrays["out"].shape
  np.testing.assert_allclose(out, arrays["out"], rtol=0, atol=1e-3 * float(np.std(arrays["out"])))


# ------------------------------------------------------------------------------------------------------
# 2. Full CIFAR-10 parameter trees equal the 2021 checkpoints' trees (so released checkpoints load).


@pytest.mark.parametrize("config_module,reference,labels_dtype", [
    (ddpm_cifar10, "vp_ddpm_cifar10", jnp.float32),
    (ncsnv2_cifar10, "ve_ncsnv2_cifar10", jnp.int32),
])
def test_cifar10_tree_equals_reference(config_module, reference, labels_dtype):
  config = config_module.get_config()
  abstract = _abstract_params(utils.create_model(config), (1, 32, 32, 3), jnp.zeros((1,), labels_dtype))
  expected, total = reference_data.reference_tree(reference)
  assert reference_data.tree_of(abstract) == expected
  assert utils.count_params(abstract) == total


@pytest.mark.parametrize("config_module,expected", [
    (ddpm_cifar10, 35_218_947),
    (ddpm_cifar10_uncond, 32_329_347),   # no Dense_0/1 and no per-block Dense_0
    (ncsnv2_cifar10, 33_970_563),
])
def test_cifar10_param_counts(config_module, expected):
  config = config_module.get_config()
  abstract = _abstract_params(utils.create_model(config), (1, 32, 32, 3), jnp.zeros((1,), jnp.int32))
  assert utils.count_params(abstract) == expected


def test_registry_names():
  assert utils.get_model_class("ddpm") is ddpm.DDPM
  assert utils.get_model_class("ncsnv2_64") is ncsnv2.NCSNv2
  assert utils.get_model_class("ncsnv2_128") is ncsnv2.NCSNv2_128
  assert utils.get_model_class("ncsnv2_256") is ncsnv2.NCSNv2_256
  assert utils.get_model_class("ncsn") is ncsn.NCSN


# ------------------------------------------------------------------------------------------------------
# 3. Forward passes of tiny versions of every network.


def _tiny_ddpm(conditional, dropout=0.0, ch_mult=(1, 2), attn_resolutions=(4,)):
  return ddpm.DDPM(nf=32, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=attn_resolutions,
                   dropout=dropout, conditional=conditional, centered=False)


def test_ddpm_conditional_forward_depends_on_time():
  model = _tiny_ddpm(conditional=True)
  x, labels = _inputs((2, 8, 8, 3), [3.0, 700.5])
  params = _random_params(_abstract_params(model, x.shape, labels))
  fwd = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y, train=False))
  out = fwd(params, x, labels)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  other = fwd(params, x, jnp.asarray([500.0, 10.0]))
  assert float(jnp.min(jnp.max(jnp.abs(out - other), axis=(1, 2, 3)))) > 1e-4


def test_ddpm_unconditional_scaled_by_sigma():
  # The VE + DDPM config (configs/ve/cifar10_ddpm.py) divides by the descending sigmas at integer labels.
  model = ddpm.DDPM(nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                    conditional=False, centered=False, scale_by_sigma=True, sigma_min=0.01, sigma_max=50.0,
                    num_scales=3)
  x, labels = _inputs((2, 8, 8, 3), [0, 2])
  abstract = _abstract_params(model, x.shape, labels)
  assert not any(k.startswith("Dense") for k in abstract)  # no time embedding at all
  fwd = jax.jit(lambda p, y: model.apply({"params": p}, x, y, train=False))
  params = _random_params(abstract)
  out, swapped = fwd(params, labels), fwd(params, jnp.asarray([2, 0]))
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(out[0] * 50.0, swapped[0] * 0.01, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out[1] * 0.01, swapped[1] * 50.0, rtol=1e-4, atol=1e-6)


def test_ddpm_dropout_in_training():
  model = _tiny_ddpm(conditional=True, dropout=0.5, ch_mult=(1,), attn_resolutions=(8,))  # one level: fast
  x, labels = _inputs((2, 8, 8, 3), [3, 700])
  params = _random_params(_abstract_params(model, x.shape, labels))
  train_fwd = jax.jit(lambda p, rng: model.apply({"params": p}, x, labels, train=True, rngs={"dropout": rng}))
  a, b = train_fwd(params, jax.random.PRNGKey(0)), train_fwd(params, jax.random.PRNGKey(1))
  assert bool(jnp.all(jnp.isfinite(a))) and a.shape == x.shape
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4          # dropout is active and driven by the rng
  np.testing.assert_array_equal(a, train_fwd(params, jax.random.PRNGKey(0)))


def test_ncsnv2_64_forward_divides_by_the_descending_sigmas():
  model = ncsnv2.NCSNv2(nf=8, num_scales=10, sigma_min=0.01, sigma_max=1.0)
  x, labels = _inputs((2, 32, 32, 3), [0, 9])
  params = _random_params(_abstract_params(model, x.shape, labels))
  fwd = jax.jit(lambda p, y: model.apply({"params": p}, x, y, train=False))
  out = fwd(params, labels)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  # The network is unconditional apart from 1/sigma, sigma[0] = sigma_max and sigma[-1] = sigma_min.
  swapped = fwd(params, jnp.asarray([9, 0]))
  np.testing.assert_allclose(out[0] * 1.0, swapped[0] * 0.01, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out[1] * 0.01, swapped[1] * 1.0, rtol=1e-4, atol=1e-6)


def test_ncsnv2_128_forward():
  model = ncsnv2.NCSNv2_128(nf=4, num_scales=10)
  x, labels = _inputs((1, 128, 128, 3), [4])
  abstract = _abstract_params(model, x.shape, labels)
  assert sorted(k for k in abstract if k.startswith("RefineBlock")) == [f"RefineBlock_{i}" for i in range(5)]
  out = jax.jit(lambda p: model.apply({"params": p}, x, labels))(_random_params(abstract))
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def test_ncsnv2_256_shapes():
  # A real 256px forward takes several seconds to compile on CPU; the traced shapes are what can break.
  model = ncsnv2.NCSNv2_256(nf=2, num_scales=10)
  x, labels = jnp.zeros((1, 256, 256, 3)), jnp.asarray([4])
  abstract = _abstract_params(model, x.shape, labels)
  assert sum(k.startswith("ResidualBlock") for k in abstract) == 12
  assert sum(k.startswith("RefineBlock") for k in abstract) == 6
  out = jax.eval_shape(lambda p: model.apply({"params": p}, x, labels), abstract)
  assert out.shape == x.shape


def _dsm_loss(model, params, noisy, labels, noise, sigmas):
  """Denoising score matching of `noisy` = x + sigma * noise (NCSN's loss, weighted by sigma^2)."""
  sigma = sigmas[labels][:, None, None, None]
  score = model.apply({"params": params}, noisy, labels)
  return jnp.mean(jnp.sum((sigma * score + noise) ** 2, axis=(1, 2, 3))), score


def test_ncsn_v1_is_conditional_and_trainable():
  model = ncsn.NCSN(nf=8, num_scales=10)
  sigmas = jnp.asarray(utils.get_sigmas(model.sigma_min, model.sigma_max, model.num_scales))
  x, labels = _inputs((2, 16, 16, 3), [0, 7])
  noise = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  noisy = x + sigmas[labels][:, None, None, None] * noise
  abstract = _abstract_params(model, x.shape, labels)
  assert abstract["ConditionalInstanceNorm2dPlus_0"]["Embed_0"]["embedding"].shape == (10, 3 * 8)
  params = _random_params(abstract)
  step = jax.jit(jax.value_and_grad(lambda p, y: _dsm_loss(model, p, noisy, y, noise, sigmas), has_aux=True))
  (loss, score), grads = step(params, labels)
  assert score.shape == x.shape and bool(jnp.all(jnp.isfinite(score))) and bool(jnp.isfinite(loss))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
  # Only the embedding rows of the labels in the batch receive gradient.
  emb_grad = jnp.abs(grads["ConditionalInstanceNorm2dPlus_0"]["Embed_0"]["embedding"]).sum(axis=1)
  assert float(emb_grad[0]) > 0 and float(emb_grad[7]) > 0 and float(emb_grad[1]) == 0
  # Same noisy input, different noise labels: the score must change (it is really noise-conditional).
  (_, other), _ = step(params, jnp.asarray([3, 9]))
  assert float(jnp.min(jnp.max(jnp.abs(score - other), axis=(1, 2, 3)))) > 1e-4


def test_ncsn_v1_32px_and_cifar10_tree():
  config = ncsn_cifar10.get_config()
  model = utils.create_model(config)
  assert isinstance(model, ncsn.NCSN) and model.num_scales == 10 and not model.scale_by_sigma
  abstract = _abstract_params(model, (1, 32, 32, 3), jnp.zeros((1,), jnp.int32))
  tree = reference_data.tree_of(abstract)
  assert tree["CondRefineBlock_3/CondRCUBlock_2/Conv_5/kernel"] == (3, 3, 128, 128)   # end block: 3 RCUs
  assert tree["CondRefineBlock_2/CondMSFBlock_0/Conv_1/kernel"] == (3, 3, 256, 128)
  assert tree["ConditionalResidualBlock_2/ConvMeanPool_0/Conv_0/kernel"] == (3, 3, 128, 256)
  assert tree["ConditionalResidualBlock_4/Conv_2/kernel"] == (3, 3, 256, 256)         # dilated shortcut
  labels = jnp.zeros((1,), jnp.int32)
  out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((1, 32, 32, 3)), labels), abstract)
  assert out.shape == (1, 32, 32, 3)


# ------------------------------------------------------------------------------------------------------
# Initialisers and single layers (cheap: one small module each).


def test_instance_norm_plus_init_and_math():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 256))
  norm = ncsn_layers.InstanceNorm2dPlus()
  params = norm.init(jax.random.PRNGKey(1), x)["params"]
  for name in ("alpha", "gamma"):
    assert params[name].shape == (1, 1, 1, 256)
    assert abs(float(params[name].mean()) - 1.0) < 0.01 and abs(float(params[name].std()) - 0.02) < 0.005
  np.testing.assert_array_equal(params["beta"], 0.0)
  # With alpha = 0, gamma = 1, beta = 0 it is plain instance normalisation.
  plain = dict(params, alpha=jnp.zeros_like(params["alpha"]), gamma=jnp.ones_like(params["gamma"]))
  h = norm.apply({"params": plain}, x)
  np.testing.assert_allclose(h.mean(axis=(1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(h.var(axis=(1, 2)), 1.0, atol=1e-3)


def test_conditional_instance_norm_plus_uses_the_label_row():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  y = jnp.asarray([1, 4])
  cond = ncsn_layers.ConditionalInstanceNorm2dPlus(num_classes=5)
  params = cond.init(jax.random.PRNGKey(1), x, y)["params"]
  table = params["Embed_0"]["embedding"]
  assert table.shape == (5, 96)
  np.testing.assert_array_equal(table[:, 64:], 0.0)
  assert abs(float(table[:, :64].mean()) - 1.0) < 0.02
  out = cond.apply({"params": params}, x, y)
  for b in range(2):
    gamma, alpha, beta = (r.reshape(1, 1, 1, 32) for r in jnp.split(table[y[b]], 3))
    row_params = {"alpha": alpha, "gamma": gamma, "beta": beta}
    plain = ncsn_layers.InstanceNorm2dPlus().apply({"params": row_params}, x)
    np.testing.assert_allclose(out[b], plain[b], rtol=1e-5, atol=1e-5)


def test_ncsn_conv_init_is_pytorch_default():

  class OneConv(nn.Module):
    @nn.compact
    def __call__(self, x):
      return ncsn_layers.ncsn_conv3x3(x, 64)

  params = OneConv().init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 16)))["params"]["Conv_0"]
  bound = 1.0 / np.sqrt(3 * 3 * 16)
  for leaf in (params["kernel"], params["bias"]):
    assert float(jnp.max(jnp.abs(leaf))) <= bound and float(jnp.max(jnp.abs(leaf))) > 0.8 * bound


def test_conv_mean_pool_halves_the_image():
  pool = ncsn_layers.ConvMeanPool(output_dim=2, kernel_size=1)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 6, 2))
  identity = {"Conv_0": {"kernel": jnp.eye(2).reshape(1, 1, 2, 2), "bias": jnp.zeros(2)}}
  out = pool.apply({"params": identity}, x)
  # atol too: a mean near zero carries float32 rounding of the summands' size.
  np.testing.assert_allclose(out, x.reshape(1, 2, 2, 3, 2, 2).mean(axis=(2, 4)), rtol=1e-6, atol=1e-6)


def test_ddpm_blocks_start_as_identity():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 32))
  attn = layers.AttnBlock()
  params = attn.init(jax.random.PRNGKey(1), x)["params"]
  assert sorted(params) == ["GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"]
  np.testing.assert_allclose(attn.apply({"params": params}, x), x, atol=1e-6)  # output NIN starts at ~0
  down = layers.Downsample(with_conv=False).apply({}, x)
  np.testing.assert_allclose(down, x.reshape(1, 2, 2, 2, 2, 32).mean(axis=(2, 4)), rtol=1e-6)
  up = layers.Upsample(with_conv=False).apply({}, x)
  np.testing.assert_array_equal(up[:, ::2, ::2], x)
  np.testing.assert_array_equal(up[:, 1::2, 1::2], x)


def test_ddpm_forward_rejects_bad_image_shape():
  model = _tiny_ddpm(conditional=True)
  with pytest.raises(ValueError, match="multiples of 2"):
    _abstract_params(model, (1, 9, 9, 3), jnp.zeros((1,)))


# ------------------------------------------------------------------------------------------------------
# 4. Bad configurations raise ValueError naming the key.


def _ncsnv2_256_config():
  config = ncsnv2_bedroom.get_config()
  config.model.name = "ncsnv2_256"
  config.data.image_size = 256
  return config


BASES = {
    "ddpm": ddpm_cifar10.get_config,
    "ncsnv2_64": ncsnv2_cifar10.get_config,
    "ncsnv2_128": ncsnv2_bedroom.get_config,
    "ncsnv2_256": _ncsnv2_256_config,
    "ncsn": ncsn_cifar10.get_config,
}

BAD = [
    ("ddpm", "model.nf", 16),                      # GroupNorm's 32 groups
    ("ddpm", "model.nf", 48),
    ("ddpm", "model.ch_mult", ()),
    ("ddpm", "model.ch_mult", (1, 0)),
    ("ddpm", "model.num_res_blocks", 0),
    ("ddpm", "model.dropout", 1.0),
    ("ddpm", "model.attn_resolutions", (12,)),
    ("ddpm", "model.nonlinearity", "tanh"),
    ("ddpm", "model.normalization", "InstanceNorm++"),
    ("ddpm", "data.image_size", 20),                # 4 levels need multiples of 8
    ("ddpm", "data.num_channels", 0),
    ("ncsnv2_64", "data.image_size", 128),          # ncsnv2_64 is for < 96px
    ("ncsnv2_64", "data.image_size", 31),
    ("ncsnv2_64", "model.nf", 0),
    ("ncsnv2_64", "model.interpolation", "bicubic"),
    ("ncsnv2_64", "model.normalization", "GroupNorm"),
    ("ncsnv2_64", "model.nonlinearity", "gelu"),
    ("ncsnv2_64", "model.num_scales", 0),
    ("ncsnv2_64", "model.sigma_min", 60.0),         # above sigma_max
    ("ncsnv2_128", "data.image_size", 64),
    ("ncsnv2_128", "data.image_size", 98),          # two halvings need multiples of 4
    ("ncsnv2_256", "data.image_size", 128),
    ("ncsnv2_256", "data.image_size", 252),         # three halvings need multiples of 8
    ("ncsn", "data.image_size", 33),
    ("ncsn", "model.interpolation", "cubic"),
    ("ncsn", "model.num_scales", 0),
]


@pytest.mark.parametrize("name,key,value", BAD, ids=[f"{n}-{k}={v}" for n, k, v in BAD])
def test_bad_config_names_the_key(name, key, value):
  config = BASES[name]()
  assert config.model.name == name
  section, field = key.split(".")
  setattr(getattr(config, section), field, value)
  with pytest.raises(ValueError) as err:
    utils.create_model(config)
  message = str(err.value)
  assert message.startswith(f"{key}=") and "\n" not in message, message


@pytest.mark.parametrize("name", sorted(BASES))
def test_paper_configs_build(name):
  assert utils.create_model(BASES[name]()) is not None
