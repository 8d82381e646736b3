"""oneDNN convolutions (score_sde/cpu_kernels/onednn_conv.py) against XLA's: values, gradients, a whole train
step, how `ops.resolve` picks them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from score_sde import config_checks, cpu_kernels, losses
from score_sde.models import ops
from score_sde.models import utils as mutils
from configs.vp import cifar10_ddpmpp_continuous

if not cpu_kernels.available():
  pytest.skip(f"native CPU kernels: {cpu_kernels.unavailable_reason()}", allow_module_level=True)

from score_sde.cpu_kernels import fused, onednn_conv  # noqa: E402  pylint: disable=wrong-import-position


def tiny_config():
  config = cifar10_ddpmpp_continuous.get_config()
  config.data.image_size = 8
  config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
  return config

GEOMETRIES = [  # x shape, w shape, strides, padding
    ((2, 9, 7, 5), (3, 3, 5, 6), (1, 1), ((1, 1), (1, 1))),   # 'SAME', odd sizes
    ((3, 16, 16, 3), (3, 3, 3, 8), (1, 1), ((1, 1), (1, 1))),  # RGB input layer
    ((2, 9, 8, 5), (3, 3, 5, 6), (2, 2), ((0, 1), (1, 1))),   # stride 2, asymmetric padding
    ((2, 8, 8, 16), (3, 3, 16, 4), (2, 2), ((0, 1), (0, 1))),  # stride 2 'SAME' as TF pads it
    ((3, 4, 4, 16), (1, 1, 16, 8), (1, 1), ((0, 0), (0, 0))),  # 1x1
    ((1, 6, 5, 4), (3, 3, 4, 4), (1, 1), ((0, 0), (0, 0))),   # 'VALID'
]


def xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", GEOMETRIES)
def test_values_and_gradients_match_xla(x_shape, w_shape, strides, padding):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  y_ref, vjp_ref = jax.vjp(lambda a, b: xla_conv(a, b, strides, padding), x, w)
  y, vjp = jax.vjp(lambda a, b: onednn_conv.conv2d(a, b, strides, padding), x, w)
  assert y.shape == y_ref.shape
  dy = jax.random.normal(kg, y.shape)
  scale = np.sqrt(np.prod(w_shape[:3]))  # sums of that many O(1) products: float32 rounding ~1e-7 * scale
  np.testing.assert_allclose(y, y_ref, atol=1e-5 * scale)
  for got, want in zip(jax.jit(vjp)(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, want, atol=2e-5 * scale * np.sqrt(x_shape[0]))


def test_kernels_are_optimised_not_reference():
  """A 'ref:' implementation would be correct but ~100x slower: the geometry must hit a JIT kernel."""
  names = onednn_conv.kernels((8, 16, 16, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)))
  assert len(names) == 3 and not any(name.startswith("ref") for name in names), names


def test_layers_use_onednn_only_with_the_kernels_ops():
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  conv = lambda o: lambda a, b: o.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dn)
  assert "OnednnConv" not in jax.jit(conv(ops.XLA)).lower(x, w).as_text()
  text = jax.jit(conv(cpu_kernels.get_ops())).lower(x, w).as_text()
  assert "OnednnConvFwd" in text
  assert cpu_kernels.get_ops() is fused.OPS and cpu_kernels.get_ops().name == "onednn"
  with pytest.raises(ValueError, match="not one of"):
    ops.resolve("cudnn")


def test_train_step_matches_xla():
  """One DDPM++ train step (loss, gradients, Adam, EMA) with oneDNN convs and native GroupNorm + SiLU equals
  the XLA one to float32 rounding."""
  config = tiny_config()
  sde, model = config_checks.validate_config(config)
  optimizer = losses.get_optimizer(config.optim)
  s, c = config.data.image_size, config.data.num_channels
  params = mutils.init_params(model, jax.random.PRNGKey(0), (1, s, s, c))
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (4, s, s, c))}
  results = {}
  for impl in ("xla", "onednn"):
    loss_fn = losses.get_loss_fn_from_config(config, sde, model.clone(ops=ops.resolve(impl)), train=True)
    step = jax.jit(losses.get_train_step(loss_fn, optimizer, config.model.ema_rate))
    lowered = step.lower(losses.create_train_state(params, optimizer), batch, jax.random.PRNGKey(2))
    hlo = lowered.as_text()
    assert ("OnednnConvBwd" in hlo) == ("NativeGroupNormBwd" in hlo) == (impl == "onednn")
    state, metrics = lowered.compile()(losses.create_train_state(params, optimizer), batch, jax.random.PRNGKey(2))
    results[impl] = (state, metrics)
  (s_xla, m_xla), (s_dnn, m_dnn) = results["xla"], results["onednn"]
  np.testing.assert_allclose(m_dnn["loss"], m_xla["loss"], rtol=1e-5)
  np.testing.assert_allclose(m_dnn["grad_norm"], m_xla["grad_norm"], rtol=1e-4)
  for got, want in zip(jax.tree.leaves(s_dnn.params), jax.tree.leaves(s_xla.params)):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_resolve_impl():
  cpu = jax.devices("cpu")[:1]
  assert ops.resolve("auto", cpu) is fused.OPS
  assert ops.resolve("auto", cpu * 2) is ops.XLA  # no sharding rule for the custom call
  assert ops.resolve("xla", cpu) is ops.XLA
  assert ops.resolve("onednn", cpu * 2) is fused.OPS
  with pytest.raises(ValueError, match=r"training.conv_impl='mkl' is not one of"):
    ops.resolve("mkl")
  config = tiny_config()
  config.training.conv_impl = "mkl"
  with pytest.raises(ValueError, match="training.conv_impl"):
    config_checks.validate_config(config)


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
  with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
    onednn_conv._build(str(tmp_path / "lib.so"))  # pylint: disable=protected-access
  assert not list(tmp_path.iterdir())  # nothing half-written


def test_missing_wheel_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(onednn_conv.importlib.metadata, "files", lambda name: [])
  with pytest.raises(RuntimeError, match="pip install onednn-cpu-gomp onednn-devel-cpu-gomp"):
    onednn_conv._wheel_file("onednn-cpu-gomp", "/libdnnl.so.3")  # pylint: disable=protected-access


def test_ddpm_with_the_kernels_ops_has_the_same_parameters_and_gradients():
  """The DDPM U-Net takes the kernels' ops too (its convs in oneDNN, dropout through the kernels' Dropout):
  the same parameter tree and values, gradients equal to float32 rounding."""
  from configs.vp.ddpm import cifar10 as ddpm_cifar10  # pylint: disable=import-outside-toplevel
  config = ddpm_cifar10.get_config()
  config.data.image_size = 8
  config.model.update(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)
  model = mutils.create_model(config)
  native = model.clone(ops=cpu_kernels.get_ops())
  x, t = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3)), jnp.array([3, 9])
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  init = lambda m: mutils.compile_once(lambda r: m.init(r, x, t, train=False), rngs)  # unoptimised: fast
  params, native_params = init(model), init(native)
  assert jax.tree.structure(native_params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(native_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(3)}) ** 2)
  grad = lambda m: jax.jit(jax.grad(loss(m)))
  assert "OnednnConvBwd" in grad(native).lower(params).as_text()
  for got, want in zip(jax.tree.leaves(grad(native)(params)), jax.tree.leaves(grad(model)(params))):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-4)


_BUILD_AND_CONV = """
import glob, os, jax, jax.numpy as jnp, numpy as np
from score_sde.cpu_kernels import onednn_conv
x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3))
y = onednn_conv.conv2d(x, w, (1, 1), ((1, 1), (1, 1)))
assert float(y[0, 1, 1, 0]) == 18.0, y
print(" ".join(sorted(glob.glob(os.path.join(os.environ["SCORE_SDE_CACHE"], "native", "*.so")))))
"""


def test_a_damaged_cached_library_is_rebuilt(tmp_path):
  """The native library's cache is keyed by its sources and verified by the digest of its bytes: a file under
  the right name whose bytes changed (truncated copy, disk damage) is rebuilt, not loaded."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, SCORE_SDE_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = lambda: subprocess.run([sys.executable, "-c", _BUILD_AND_CONV], env=env, cwd=root, capture_output=True,
                               text=True, timeout=600)
  first = run()
  assert first.returncode == 0, first.stderr[-3000:]
  (library,) = first.stdout.split()
  assert onednn_conv._cached_build_matches(library, open(library + ".stamp").read().split()[0])  # pylint: disable=protected-access
  with open(library, "r+b") as f:  # the same name, other bytes
    f.truncate(os.path.getsize(library) // 2)
  second = run()
  assert second.returncode == 0, second.stderr[-3000:]
  key = open(library + ".stamp").read().split()[0]
  assert onednn_conv._cached_build_matches(library, key)  # pylint: disable=protected-access
