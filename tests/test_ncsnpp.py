"""NCSN++ / DDPM++: golden outputs of the 2021 networks, parameter trees and counts, every knob, bad configs.

Kept fast for a 2-core CPU: full-size networks are only traced abstractly (`jax.eval_shape`), tiny networks
get random parameters from numpy (compiling `init` costs far more than the forward pass) and one jitted
forward each.
"""
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.models import layers, layerspp, ncsnpp, utils
from score_sde.models import up_or_down_sampling as updown
from tests import reference_data

VE_CONFIG = "configs.ve.cifar10_ncsnpp_continuous"
VP_CONFIG = "configs.vp.cifar10_ddpmpp_continuous"


def _config(module):
  return importlib.import_module(module).get_config()


def _abstract_params(model, shape, labels):
  """Parameter shapes without running (or compiling) the initialisers."""
  return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros(shape, jnp.float32),
                                           jnp.asarray(labels, jnp.float32), train=False))["params"]


def _random_params(abstract, seed=0, std=0.2):
  """Random parameters of the given shapes (nonzero everywhere, so every path affects the output)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape), jnp.float32), abstract)


# ------------------------------------------------------------------------------------------------------
# 1. Golden outputs of the 2021 networks.

@pytest.mark.parametrize("name", ["ve_ncsnpp_continuous", "vp_ddpmpp_continuous"])
def test_golden_outputs(name):
  arrays, meta = reference_data.golden(name)
  model = ncsnpp.NCSNpp.from_config(reference_data.golden_config(meta))
  assert model.scale_by_sigma == meta["scale_by_sigma"] and model.centered == meta["centered"]
  with jax.default_matmul_precision("highest"):
    apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, train=False))
    out = np.asarray(apply(arrays["params"], arrays["x"], arrays["labels"]))
  assert out.shape == arrays["out"].shape
  np.testing.assert_allclose(out, arrays["out"], rtol=0, atol=1e-3 * arrays["out"].std())


# ------------------------------------------------------------------------------------------------------
# 2. Parameter trees, creation order and counts.

def _call_order(model, shape):
  """Module paths in the order their methods are first entered (= Flax creation order here)."""
  order = []

  def record(f, args, kwargs, context):
    path = "/".join(context.module.path) or "<root>"
    if path not in order:
      order.append(path)
    return f(*args, **kwargs)

  with nn.intercept_methods(record):
    params = _abstract_params(model, shape, np.ones(shape[:1]))
  return params, order


@pytest.mark.parametrize("config_module,reference", [(VE_CONFIG, "ve_cifar10_ncsnpp_continuous"),
                                                     (VP_CONFIG, "vp_cifar10_ddpmpp_continuous")])
def test_param_tree_matches_reference(config_module, reference):
  model = ncsnpp.NCSNpp.from_config(_config(config_module))
  params, order = _call_order(model, (1, 32, 32, 3))
  tree, total = reference_data.reference_tree(reference)
  assert reference_data.tree_of(params) == tree
  assert utils.count_params(params) == total
  expected_order = (reference_data.DATA / "param_trees" / f"{reference}.call_order.txt").read_text().split()
  assert order == expected_order


def _positional_ve():
  config = _config(VE_CONFIG)
  config.model.embedding_type = "positional"
  return config


@pytest.mark.parametrize("make_config,expected", [
    (lambda: _config(VE_CONFIG), 62_758_915),
    (_positional_ve, 62_693_251),
    (lambda: _config("configs.ve.cifar10_ncsnpp_deep_continuous"), 107_587_075),
    (lambda: _config(VP_CONFIG), 61_804_419),
    (lambda: _config("configs.vp.cifar10_ddpmpp_deep_continuous"), 106_632_579),
], ids=["ncsnpp_ve", "ncsnpp_positional", "ncsnpp_deep", "ddpmpp", "ddpmpp_deep"])
def test_param_counts(make_config, expected):
  model = ncsnpp.NCSNpp.from_config(make_config())
  assert utils.count_params(_abstract_params(model, (1, 32, 32, 3), [1.0])) == expected


# ------------------------------------------------------------------------------------------------------
# 3. Every knob value on tiny networks (8x8, nf 16, two levels, one block per level).

TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8, dropout=0.1)

# A covering set rather than the full product: every value of every knob appears, and so does every
# (fir, with_conv) pair of the DDPM-block resamplers and of the pyramids (which exercises the fused FIR
# Conv2d up/down paths that the golden networks do not reach).
KNOB_CASES = {
    "ve_ncsnpp": dict(resblock_type="biggan", fir=True, progressive="none", progressive_input="residual",
                      embedding_type="fourier", skip_rescale=True, conditional=True, scale_by_sigma=True,
                      nonlinearity="swish"),
    "ddpmpp": dict(resblock_type="biggan", fir=False, progressive="none", progressive_input="none",
                   embedding_type="positional", skip_rescale=True, conditional=True, scale_by_sigma=False,
                   nonlinearity="swish", centered=True),
    "ddpm_fir_conv": dict(resblock_type="ddpm", fir=True, resamp_with_conv=True, progressive="residual",
                          progressive_input="input_skip", progressive_combine="cat",
                          embedding_type="positional", skip_rescale=False, conditional=False,
                          scale_by_sigma=True, nonlinearity="elu"),
    "ddpm_naive_noconv": dict(resblock_type="ddpm", fir=False, resamp_with_conv=False, progressive="output_skip",
                              progressive_input="residual", embedding_type="fourier", skip_rescale=True,
                              conditional=True, scale_by_sigma=False, nonlinearity="relu"),
    "ddpm_fir_noconv": dict(resblock_type="ddpm", fir=True, resamp_with_conv=False, progressive="output_skip",
                            progressive_input="input_skip", progressive_combine="sum",
                            embedding_type="positional", skip_rescale=False, conditional=True,
                            scale_by_sigma=False, nonlinearity="lrelu"),
    "ddpm_naive_conv": dict(resblock_type="ddpm", fir=False, resamp_with_conv=True, progressive="residual",
                            progressive_input="none", embedding_type="fourier", skip_rescale=True,
                            conditional=False, scale_by_sigma=True, nonlinearity="swish"),
    "biggan_fir_skip": dict(resblock_type="biggan", fir=True, progressive="output_skip",
                            progressive_input="input_skip", progressive_combine="cat",
                            embedding_type="positional", skip_rescale=False, conditional=False,
                            scale_by_sigma=False, nonlinearity="lrelu", num_channels=1),
    "biggan_naive_residual": dict(resblock_type="biggan", fir=False, progressive="residual",
                                  progressive_input="input_skip", progressive_combine="sum",
                                  embedding_type="fourier", skip_rescale=False, conditional=True,
                                  scale_by_sigma=True, nonlinearity="elu"),
}


def _tiny(**knobs):
  return ncsnpp.NCSNpp(**dict(TINY, **knobs))


def _tiny_inputs(model, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(2, model.image_size, model.image_size, model.num_channels)).astype(np.float32)
  # Valid for both embeddings: positive sigmas for Fourier, indices into the sigma list for positional.
  labels = np.array([0.5, 3.0], np.float32)
  return jnp.asarray(x), jnp.asarray(labels)


@pytest.mark.parametrize("case", sorted(KNOB_CASES))
def test_tiny_forward_every_knob(case):
  model = _tiny(**KNOB_CASES[case])
  x, labels = _tiny_inputs(model)
  params = {"params": _random_params(_abstract_params(model, x.shape, labels))}
  # Eager (un-jitted) on purpose: op-by-op kernels are cached across cases of equal shapes, which is much
  # cheaper here than compiling every variant whole.
  out = np.asarray(model.apply(params, x, labels))
  assert out.shape == x.shape
  assert np.all(np.isfinite(out)) and out.std() > 0
  if model.scale_by_sigma:
    unscaled = np.asarray(model.clone(scale_by_sigma=False).apply(params, x, labels))
    # Fourier: sigma is the label; positional: the label indexes the descending sigma list.
    if model.embedding_type == "fourier":
      sigmas = np.asarray(labels)
    else:
      sigmas = utils.get_sigmas(model.sigma_min, model.sigma_max, model.num_scales)[np.asarray(labels, int)]
    np.testing.assert_allclose(out * sigmas[:, None, None, None], unscaled,
                               rtol=1e-4, atol=1e-5 * np.abs(unscaled).max())


def test_tiny_train_mode_uses_dropout_rng():
  model = _tiny(**KNOB_CASES["ve_ncsnpp"])
  x, labels = _tiny_inputs(model)
  params = {"params": _random_params(_abstract_params(model, x.shape, labels))}

  def forward(seed, train=True):
    # 'rbg' keys: any key works for dropout, and these avoid compiling a threefry hash per block.
    rngs = {"dropout": jax.random.key(seed, impl="rbg")}
    return np.asarray(model.apply(params, x, labels, train=train, rngs=rngs))

  a, b = forward(1), forward(2)
  assert a.shape == x.shape and np.all(np.isfinite(a))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, forward(1))
  np.testing.assert_array_equal(forward(1, train=False), forward(2, train=False))


def test_fourier_projection_is_frozen():
  proj = layerspp.GaussianFourierProjection(embedding_size=8, scale=16.0)
  x = jnp.array([0.1, -2.0])
  params = proj.init(jax.random.PRNGKey(0), x)
  grads = jax.grad(lambda p: jnp.sum(proj.apply(p, x) ** 2))(params)
  assert float(jnp.abs(grads["params"]["W"]).max()) == 0.0
  w = np.asarray(params["params"]["W"], np.float64)
  expected = np.concatenate([np.sin(2 * np.pi * np.outer(x, w)), np.cos(2 * np.pi * np.outer(x, w))], -1)
  np.testing.assert_allclose(np.asarray(proj.apply(params, x)), expected, atol=1e-4)


# ------------------------------------------------------------------------------------------------------
# FIR resampling against a direct numpy transcription of the StyleGAN2 definitions.

def _np_upfirdn(x, k, up=1, down=1, pad0=0, pad1=0):
  """Zero-insertion upsampling, pad/crop, true 2-D convolution with k, decimation (float64)."""
  b, h, w, c = x.shape
  z = np.zeros((b, h * up, w * up, c))
  z[:, ::up, ::up] = x
  pads = (max(pad0, 0), max(pad1, 0))
  z = np.pad(z, [(0, 0), pads, pads, (0, 0)])
  z = z[:, max(-pad0, 0):z.shape[1] - max(-pad1, 0), max(-pad0, 0):z.shape[2] - max(-pad1, 0)]
  kh, kw = k.shape
  oh, ow = z.shape[1] - kh + 1, z.shape[2] - kw + 1
  out = np.zeros((b, oh, ow, c))
  for i in range(kh):
    for j in range(kw):
      out += z[:, i:i + oh, j:j + ow] * k[kh - 1 - i, kw - 1 - j]
  return out[:, ::down, ::down]


def _np_conv_transpose(x, w, stride):
  """TF conv2d_transpose ('VALID') of x with the flipped, in/out-swapped kernel, as StyleGAN2 builds it."""
  kh, kw, _, cout = w.shape
  filt = w[::-1, ::-1]  # transposed conv filter (kh, kw, in, out) after StyleGAN2's flip
  b, h, wd, _ = x.shape
  y = np.zeros((b, (h - 1) * stride + kh, (wd - 1) * stride + kw, cout))
  for i in range(kh):
    for j in range(kw):
      y[:, i:i + (h - 1) * stride + 1:stride, j:j + (wd - 1) * stride + 1:stride] += np.einsum(
          "bhwc,co->bhwo", x, filt[i, j])
  return y


def _np_conv_valid(x, w, stride):
  kh, kw, _, cout = w.shape
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, cout))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride]
      out += np.einsum("bhwc,co->bhwo", patch, w[i, j])
  return out


@pytest.fixture(name="image")
def _image():
  return np.random.default_rng(3).normal(size=(2, 6, 6, 3))


@pytest.mark.parametrize("up,down,pad0,pad1", [(2, 1, 2, 1), (1, 2, 1, 1), (1, 1, -1, 2), (3, 2, 0, -1)])
def test_upfirdn_2d_matches_definition(image, up, down, pad0, pad1):
  k = np.random.default_rng(0).uniform(size=(4, 3)) if up == 1 and down == 1 else \
      np.random.default_rng(0).uniform(size=(3, 3))
  got = updown.upfirdn_2d(jnp.asarray(image, jnp.float32), k, up=up, down=down, pad0=pad0, pad1=pad1)
  np.testing.assert_allclose(np.asarray(got), _np_upfirdn(image, k, up, down, pad0, pad1), atol=1e-5)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 4, 3)])
def test_fused_fir_convs_match_stylegan2_definition(image, taps):
  w = np.random.default_rng(1).normal(size=(3, 3, 3, 5))
  k = updown.setup_kernel(taps)
  x32, w32 = jnp.asarray(image, jnp.float32), jnp.asarray(w, jnp.float32)
  with jax.default_matmul_precision("highest"):
    up = np.asarray(updown.upsample_conv_2d(x32, w32, k=taps))
    down = np.asarray(updown.conv_downsample_2d(x32, w32, k=taps))
  p = (len(taps) - 2) - 2
  want_up = _np_upfirdn(_np_conv_transpose(image, w, 2), k * 4, pad0=(p + 1) // 2 + 1, pad1=p // 2 + 1)
  p = (len(taps) - 2) + 2
  want_down = _np_conv_valid(_np_upfirdn(image, k, pad0=(p + 1) // 2, pad1=p // 2), w, 2)
  assert up.shape == (2, 12, 12, 5) and down.shape == (2, 3, 3, 5)
  np.testing.assert_allclose(up, want_up, atol=1e-4)
  np.testing.assert_allclose(down, want_down, atol=1e-4)


def test_fir_resampling_properties(image):
  x = jnp.asarray(image, jnp.float32)
  # Default kernels reduce to nearest-neighbour upsampling and box downsampling.
  np.testing.assert_allclose(updown.upsample_2d(x), updown.naive_upsample_2d(x), atol=1e-6)
  np.testing.assert_allclose(updown.downsample_2d(x), updown.naive_downsample_2d(x), atol=1e-6)
  np.testing.assert_allclose(updown.naive_downsample_2d(updown.naive_upsample_2d(x)), x, atol=1e-6)
  # Normalised kernel (gain 4 when upsampling): constant images stay constant away from the border.
  ones = jnp.ones((1, 8, 8, 2))
  np.testing.assert_allclose(updown.upsample_2d(ones, (1, 3, 3, 1))[:, 2:-2, 2:-2], 1.0, atol=1e-6)
  np.testing.assert_allclose(updown.downsample_2d(ones, (1, 3, 3, 1))[:, 1:-1, 1:-1], 1.0, atol=1e-6)
  conv = updown.Conv2d(4, kernel=3, down=True)
  params = jax.eval_shape(lambda: conv.init(jax.random.PRNGKey(0), x))["params"]
  assert {k: v.shape for k, v in params.items()} == {"weight": (3, 3, 3, 4), "bias": (4,)}


# ------------------------------------------------------------------------------------------------------
# 4. Bad configs and inputs.

def _set(config, key, value):
  section, field = key.split(".")
  getattr(config, section)[field] = value
  return config


@pytest.mark.parametrize("key,value", [
    ("model.resblock_type", "resnet"),
    ("model.progressive", "foo"),
    ("model.progressive_input", "output_skip"),
    ("model.progressive_combine", "mean"),
    ("model.embedding_type", "learned"),
    ("model.nonlinearity", "gelu"),
    ("data.image_size", 36),
    ("model.attn_resolutions", (12,)),
    ("model.ch_mult", ()),
    ("model.num_res_blocks", 0),
    ("model.dropout", 1.5),
])
def test_bad_config_raises_naming_key(key, value):
  config = _set(_config(VE_CONFIG), key, value)
  with pytest.raises(ValueError, match=key.replace(".", r"\.")) as info:
    ncsnpp.NCSNpp.from_config(config)
  assert "\n" not in str(info.value)


def test_fourier_needs_continuous_training():
  config = _set(_config(VE_CONFIG), "training.continuous", False)
  with pytest.raises(ValueError, match=r"model\.embedding_type.*training\.continuous"):
    ncsnpp.NCSNpp.from_config(config)
  config.model.embedding_type = "positional"
  assert ncsnpp.NCSNpp.from_config(config).embedding_type == "positional"


def test_valid_choices_are_listed():
  config = _set(_config(VE_CONFIG), "model.progressive", "foo")
  with pytest.raises(ValueError, match=r"\['none', 'output_skip', 'residual'\]"):
    ncsnpp.NCSNpp.from_config(config)


def test_wrong_input_shape_raises():
  model = _tiny()
  with pytest.raises(ValueError, match="data.image_size"):
    _abstract_params(model, (2, 16, 16, 3), [1.0, 2.0])


def test_registered_under_ncsnpp():
  try:
    model = utils.create_model(_config(VP_CONFIG))
  except ImportError as e:  # another model module of the registry is not written yet
    pytest.skip(f"model registry incomplete: {e}")
  assert isinstance(model, ncsnpp.NCSNpp)
  assert model.embedding_type == "positional" and not model.fir and model.centered
  assert layers.get_act(model.nonlinearity) is nn.swish
