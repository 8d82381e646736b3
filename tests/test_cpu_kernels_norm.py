"""Native GroupNorm (+ SiLU) (score_sde/cpu_kernels/native_norm.py) against flax.linen.GroupNorm: values,
gradients, routing, parameter names, bad input."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import cpu_kernels
from score_sde.models import layerspp
from score_sde.models import ops as ops_lib

if not cpu_kernels.available():
  pytest.skip(f"native CPU kernels: {cpu_kernels.unavailable_reason()}", allow_module_level=True)

from score_sde.cpu_kernels import dropout as fast_dropout  # noqa: E402  pylint: disable=wrong-import-position
from score_sde.cpu_kernels import native_norm  # noqa: E402  pylint: disable=wrong-import-position

CASES = [  # x shape, groups, act
    ((2, 5, 7, 12), 3, "silu"),     # odd spatial sizes, 4 channels per group
    ((3, 4, 4, 96), 24, "silu"),    # min(96 // 4, 32) groups as NCSN++ picks them
    ((2, 8, 8, 64), 16, "none"),    # the attention block's GroupNorm: no activation
    ((3, 6, 16), 4, "silu"),        # rank 3: statistics over all but the first and last axes
]


def flax_reference(x, scale, bias, groups, act):
  y = nn.GroupNorm(num_groups=groups, epsilon=1e-6).apply({"params": {"scale": scale, "bias": bias}}, x)
  return nn.silu(y) if act == "silu" else y


def inputs(shape, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = 3.0 * jax.random.normal(k[0], shape) + 1.5  # an offset mean: catches E[x^2] - E[x]^2 cancellation
  scale = 1.0 + 0.3 * jax.random.normal(k[1], shape[-1:])
  bias = 0.2 * jax.random.normal(k[2], shape[-1:])
  return x, scale, bias, jax.random.normal(k[3], shape)


@pytest.mark.parametrize("shape,groups,act", CASES)
def test_values_and_gradients_match_flax(shape, groups, act):
  x, scale, bias, dy = inputs(shape)
  y_ref, vjp_ref = jax.vjp(lambda *a: flax_reference(*a, groups, act), x, scale, bias)
  y, vjp = jax.vjp(lambda *a: native_norm.group_norm(*a, groups, 1e-6, act), x, scale, bias)
  np.testing.assert_allclose(y, y_ref, atol=2e-6, rtol=1e-5)
  for got, want in zip(jax.jit(vjp)(dy), vjp_ref(dy)):
    # parameter gradients sum N*H*W terms: float32 rounding grows with the count
    np.testing.assert_allclose(got, want, atol=1e-5 * np.sqrt(np.prod(shape[:-1])), rtol=1e-5)


def test_shift_is_added_per_sample_and_channel():
  """group_norm(x, shift=s) = GroupNorm(x + s[:, None, None, :]), gradient of s included (the conv bias and
  time embedding that `layerspp.conv_temb_norm` folds in)."""
  x, scale, bias, dy = inputs((3, 4, 5, 16))
  shift = 2.0 * jax.random.normal(jax.random.PRNGKey(7), (3, 16))
  y_ref, vjp_ref = jax.vjp(lambda x, s, a, b: flax_reference(x + s[:, None, None, :], a, b, 4, "silu"),
                           x, shift, scale, bias)
  y, vjp = jax.vjp(lambda x, s, a, b: native_norm.group_norm(x, a, b, 4, 1e-6, "silu", shift=s),
                   x, shift, scale, bias)
  np.testing.assert_allclose(y, y_ref, atol=2e-6, rtol=1e-5)
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5)
  with pytest.raises(ValueError, match=r"shift \(16,\) for input \(3, 4, 5, 16\): it must be \(N, C\)"):
    native_norm.group_norm(x, scale, bias, 4, 1e-6, "silu", shift=shift[0])


def test_dropout_mask_is_applied_as_flax_does():
  """group_norm(..., keep=m, keep_prob=p) = where(m, act(GroupNorm(x)) / p, 0), gradients included, with the
  mask `Dropout.keep_mask` draws: the one the kernels' `Dropout` itself applies."""
  x, scale, bias, dy = inputs((3, 4, 5, 16))
  dropout = fast_dropout.Dropout(0.3)
  rngs = {"dropout": jax.random.PRNGKey(11)}
  keep = dropout.apply({}, x.shape, False, rngs=rngs, method=fast_dropout.Dropout.keep_mask)
  assert keep.dtype == bool and 0.5 < float(keep.mean()) < 0.9
  np.testing.assert_array_equal(dropout.apply({}, jnp.ones(x.shape), False, rngs=rngs), jnp.where(keep, 1 / 0.7, 0.0))
  reference = lambda x, a, b: dropout.apply({}, flax_reference(x, a, b, 4, "silu"), False, rngs=rngs)
  y_ref, vjp_ref = jax.vjp(reference, x, scale, bias)
  y, vjp = jax.vjp(lambda x, a, b: native_norm.group_norm(x, a, b, 4, 1e-6, "silu", keep=keep, keep_prob=0.7),
                   x, scale, bias)
  np.testing.assert_allclose(y, y_ref, atol=4e-6, rtol=1e-5)
  assert np.all((np.asarray(y) == 0) >= ~np.asarray(keep))  # dropped entries are exactly 0
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5)
  assert dropout.apply({}, x.shape, True, rngs=rngs, method=fast_dropout.Dropout.keep_mask) is None  # deterministic
  with pytest.raises(ValueError, match=r"dropout mask bool\[3, 4, 5\] for input \(3, 4, 5, 16\)"):
    native_norm.group_norm(x, scale, bias, 4, 1e-6, "silu", keep=keep[..., 0], keep_prob=0.7)


def test_gradient_matches_finite_differences():
  """An oracle independent of flax: central differences in float64 of the same formula in numpy."""
  shape, groups = (2, 3, 3, 8), 2
  x, scale, bias, dy = inputs(shape, seed=3)

  def loss_np(x):
    n, c = x.shape[0], x.shape[-1]
    g = x.reshape(n, -1, groups, c // groups)
    mean, var = g.mean(axis=(1, 3), keepdims=True), g.var(axis=(1, 3), keepdims=True)
    z = ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
    z = z * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)
    return np.sum(z / (1 + np.exp(-z)) * np.asarray(dy, np.float64))

  grad = jax.grad(lambda x: jnp.sum(native_norm.group_norm(x, scale, bias, groups, 1e-6, "silu") * dy))(x)
  x64, eps = np.asarray(x, np.float64), 1e-5
  for index in [(0, 0, 0, 0), (1, 2, 1, 5), (0, 1, 2, 7), (1, 0, 2, 3)]:
    e = np.zeros_like(x64)
    e[index] = eps
    numeric = (loss_np(x64 + e) - loss_np(x64 - e)) / (2 * eps)
    np.testing.assert_allclose(grad[index], numeric, rtol=1e-3, atol=1e-4)


def test_results_do_not_depend_on_thread_count():
  """Parameter gradients add per-sample sums in sample order: 1 and 2 OpenMP threads agree bitwise (what a
  resumed run on a differently sized host needs to reproduce the uninterrupted one)."""
  script = ("import jax, numpy as np\n"
            "from score_sde.cpu_kernels import native_norm\n"
            "x = jax.random.normal(jax.random.PRNGKey(0), (5, 6, 6, 16))\n"
            "s, b = np.ones(16, np.float32), np.zeros(16, np.float32)\n"
            "f = lambda x, s, b: (native_norm.group_norm(x, s, b, 4, 1e-6, 'silu') ** 2).sum()\n"
            "print(np.concatenate([np.ravel(g) for g in jax.grad(f, argnums=(0, 1, 2))(x, s, b)]).tobytes().hex())\n")
  outputs = []
  for threads in ("1", "2"):
    env = dict(os.environ, OMP_NUM_THREADS=threads, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    outputs.append(result.stdout.strip())
  assert outputs[0] == outputs[1] and outputs[0]


def test_layerspp_routes_group_norm_with_silu_or_nothing_only():
  """With the kernels' ops: GroupNorm + SiLU and bare GroupNorm are one custom call each; another
  activation keeps XLA's GroupNorm. The parameter tree is the same either way (`GroupNorm_k/{scale,bias}`)."""

  class Block(nn.Module):
    act: object
    ops: ops_lib.Ops = ops_lib.XLA

    @nn.compact
    def __call__(self, x):
      return layerspp.group_norm(layerspp.group_norm(x, self.act, ops=self.ops), ops=self.ops)

  x = jnp.ones((2, 4, 4, 8))
  for act, native_calls in ((nn.swish, 2), (nn.elu, 1), (None, 2)):
    block = Block(act)
    params = block.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, params) == {"params": {"GroupNorm_0": {"bias": (8,), "scale": (8,)},
                                                           "GroupNorm_1": {"bias": (8,), "scale": (8,)}}}
    native_block = block.clone(ops=cpu_kernels.get_ops())
    assert jax.tree.map(jnp.shape, native_block.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, params)
    loss = lambda b: lambda p: jnp.sum(b.apply(p, x) ** 2)  # pylint: disable=cell-var-from-loop
    hlo = jax.jit(jax.grad(loss(native_block))).lower(params).as_text()
    assert hlo.count("NativeGroupNormFwd") == native_calls, (act, hlo.count("NativeGroupNormFwd"))
    assert "NativeGroupNorm" not in jax.jit(jax.grad(loss(block))).lower(params).as_text()  # ops_lib.XLA


def test_bad_input_is_refused():
  x, scale, bias, _ = inputs((2, 4, 4, 12))
  with pytest.raises(ValueError, match="must divide into the groups"):
    native_norm.group_norm(x, scale, bias, 5, 1e-6, "silu")
  with pytest.raises(ValueError, match="must divide into the groups and match scale"):
    native_norm.group_norm(x, scale[:6], bias, 3, 1e-6, "silu")
  with pytest.raises(ValueError, match="activation 'gelu' is not one of"):
    native_norm.group_norm(x, scale, bias, 3, 1e-6, "gelu")


def test_native_model_has_the_same_parameters_and_output():
  """A DDPM++ initialised with the kernels' ops (native Conv without bias add, GroupNorm with shift) has
  the parameter tree and values of the plain one, and the same output to float32 rounding."""
  from configs.vp import cifar10_ddpmpp_continuous  # pylint: disable=import-outside-toplevel
  from score_sde.models import utils as mutils  # pylint: disable=import-outside-toplevel
  config = cifar10_ddpmpp_continuous.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
  model = mutils.create_model(config)
  native_model = model.clone(ops=cpu_kernels.get_ops())
  x, t = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3)), jnp.array([0.3, 0.9])
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  init = lambda m: mutils.compile_once(lambda r: m.init(r, x, t, train=False), rngs)  # unoptimised: fast
  plain = init(model)
  native = init(native_model)
  assert jax.tree.structure(native) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(native), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)
  # Non-zero biases everywhere (they start at 0): the folded conv bias must count.
  leaves, treedef = jax.tree.flatten(plain)
  keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  y_native = native_model.apply(params, x, t, train=False)
  np.testing.assert_allclose(y_native, model.apply(params, x, t, train=False), atol=2e-5, rtol=1e-5)
