"""The train step's memory knobs: training.remat, training.compute_dtype, training.grad_accum_steps.

remat: the 2021 parameter trees are unchanged, every residual block is checkpointed, and loss and gradients
(dropout on) equal those without it. compute_dtype: every conv runs in bfloat16, the loss stays within 1e-2 of
float32's, the state stays float32 and training progresses alike. grad_accum_steps: k micro-batches give the
full batch's update for the continuous SDE loss and the discrete DDPM and SMLD losses. Tiny 8x8 networks with
random parameters from numpy (no init compiled), jitted with FAST_COMPILE_OPTIONS.
"""
import collections
import importlib
import subprocess
import sys

import flax.linen as nn
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
import optax

from score_sde import losses, mixed_precision, sde_lib
from score_sde.models import ops, remat
from score_sde.models import utils as mutils
from tests import reference_data, train_utils

DDPMPP = "configs.vp.cifar10_ddpmpp_continuous"   # DDPM++: DDPM residual blocks
NCSNPP = "configs.ve.cifar10_ncsnpp_continuous"   # NCSN++: BigGAN blocks, FIR, Fourier features
DDPM = "configs.vp.ddpm.cifar10"                  # DDPM U-Net, discrete DDPM loss
NCSNV2 = "configs.ve.ncsnv2.cifar10"              # NCSNv2 RefineNet, discrete SMLD loss
NCSN = "configs.ve.ncsn.cifar10"                  # NCSN v1 (conditional RefineNet), discrete SMLD loss
ALL = [DDPMPP, NCSNPP, DDPM, NCSNV2, NCSN]


def _tiny(module, dropout=0.1, levels=2):
  """An 8x8 version of a paper config (`levels` resolutions for the U-Nets; the RefineNets' are fixed)."""
  config = importlib.import_module(module).get_config()
  config.data.image_size = 8
  config.training.batch_size = 8
  if config.model.name in ("ncsnpp", "ddpm"):
    config.model.update(nf=32 if config.model.name == "ddpm" else 8, ch_mult=(1, 2)[:levels], num_res_blocks=1,
                        attn_resolutions=(4,) if levels > 1 else (), dropout=dropout)
  else:
    config.model.nf = 4
  return config


def _label_dtype(config):
  return mutils.label_dtype(sde_lib.get_sde(config), config.training.continuous)


def _abstract_params(model, config, image_size=8):
  shape = (1, image_size, image_size, config.data.num_channels)
  return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros(shape),
                                           jnp.zeros((1,), _label_dtype(config)), train=False))["params"]


def _random_params(abstract, seed=0, std=0.2):
  """Nonzero random parameters (every path affects the output), without compiling an initialiser."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape), jnp.float32), abstract)


def _compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=mutils.FAST_COMPILE_OPTIONS)


def _images(config, n=8, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, 8, 8, config.data.num_channels))


def _assert_trees_close(actual, expected, rtol):
  """Leafwise rtol, plus an atol of rtol x the largest entry overall (for entries that are zero in exact math,
  e.g. attention key-bias gradients, which are rounding noise either way)."""
  scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(expected))
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------------------------------------------
# training.remat

@pytest.mark.parametrize("module,reference", [(DDPMPP, "vp_cifar10_ddpmpp_continuous"),
                                              (NCSNPP, "ve_cifar10_ncsnpp_continuous"),
                                              (DDPM, "vp_ddpm_cifar10"), (NCSNV2, "ve_ncsnv2_cifar10")])
def test_remat_keeps_the_2021_parameter_trees(module, reference):
  config = importlib.import_module(module).get_config()
  model = remat.with_remat(mutils.create_model(config), True)
  assert model.remat
  params = _abstract_params(model, config, image_size=32)
  tree, total = reference_data.reference_tree(reference)
  assert reference_data.tree_of(params) == tree
  assert mutils.count_params(params) == total


def test_remat_keeps_the_ncsn_tree():
  config = importlib.import_module(NCSN).get_config()
  model = mutils.create_model(config)
  plain, rematted = (_abstract_params(m, config, 32) for m in (model, remat.with_remat(model, True)))
  assert reference_data.tree_of(rematted) == reference_data.tree_of(plain)


def _checkpoints_in(jaxpr):
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name in ("checkpoint", "remat", "remat2")  # jax.checkpoint's primitive
    for sub in jax_core.jaxprs_in_params(eqn.params):
      count += _checkpoints_in(sub)
  return count


def _blocks(params):
  return sum(1 for name in params if name.split("_")[0] in ("ResnetBlockDDPM", "ResnetBlockDDPMpp",
                                                             "ResnetBlockBigGANpp", "ResidualBlock",
                                                             "ConditionalResidualBlock", "RefineBlock",
                                                             "CondRefineBlock"))


@pytest.mark.parametrize("module", ALL)
def test_remat_checkpoints_every_block(module):
  config = _tiny(module)
  sde, model = sde_lib.get_sde(config), mutils.create_model(config)
  params = _abstract_params(model, config)
  images, rng = _images(config), jax.random.PRNGKey(2)
  assert _blocks(params) > 0
  for remat_on, expected in ((False, 0), (True, _blocks(params))):
    loss_fn = losses.get_loss_fn_from_config(config, sde, remat.with_remat(model, remat_on), train=True)
    assert _checkpoints_in(jax.make_jaxpr(loss_fn)(params, images, rng).jaxpr) == expected


def _loss_and_grads_with_and_without_remat(config, model):
  sde = sde_lib.get_sde(config)
  params = _random_params(_abstract_params(model, config))
  images, rng = _images(config), jax.random.PRNGKey(2)
  plain, rematted = (losses.get_loss_fn_from_config(config, sde, m, train=True)
                     for m in (model, remat.with_remat(model, True)))
  # One compiled call for both.
  both = _compiled(lambda p, x, r: (jax.value_and_grad(plain)(p, x, r), jax.value_and_grad(rematted)(p, x, r)),
                   params, images, rng)
  return both(params, images, rng)


@pytest.mark.parametrize("module,rtol", [(DDPMPP, 1e-6), (NCSNPP, 1e-6), (DDPM, 1e-6), (NCSNV2, 3e-6)])
def test_remat_changes_no_number(module, rtol):
  """Dropout is on (train=True, rate 0.1; the RefineNets have none): equal losses mean equal masks. (The SMLD
  loss weights sigma_max^2 = 50^2: its gradients are sums of large terms, whose rounding a recomputation in
  another fusion moves by 1e-6 of the largest.)"""
  config = _tiny(module, levels=1)
  (loss, grads), (loss_remat, grads_remat) = _loss_and_grads_with_and_without_remat(config,
                                                                                    mutils.create_model(config))
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  _assert_trees_close(grads_remat, grads, rtol=rtol)


def test_remat_with_the_cpu_kernels_changes_no_number():
  from score_sde import cpu_kernels  # pylint: disable=g-import-not-at-top
  if not cpu_kernels.available():
    pytest.skip(cpu_kernels.unavailable_reason())
  config = _tiny(DDPMPP, levels=1)
  model = ops.with_ops(mutils.create_model(config), ops.resolve("onednn"))
  (loss, grads), (loss_remat, grads_remat) = _loss_and_grads_with_and_without_remat(config, model)
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  _assert_trees_close(grads_remat, grads, rtol=1e-6)


def test_remat_block_binds_keywords_and_keeps_its_name():
  from score_sde.models import layerspp  # pylint: disable=g-import-not-at-top
  cls = remat.block(layerspp.ResnetBlockDDPMpp, True)
  assert cls.__name__ == "ResnetBlockDDPMpp" and issubclass(cls, layerspp.ResnetBlockDDPMpp)
  assert remat.block(layerspp.ResnetBlockDDPMpp, True) is cls and remat.block(cls, False) is cls
  x, temb = jnp.ones((1, 4, 4, 8)), jnp.ones((1, 16))
  block = cls(act=jax.nn.swish, out_ch=8, dropout=0.5)
  plain = layerspp.ResnetBlockDDPMpp(act=jax.nn.swish, out_ch=8, dropout=0.5)
  abstract = jax.eval_shape(lambda: block.init({"params": jax.random.PRNGKey(0)}, x, temb, False))
  assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(
      jax.eval_shape(lambda: plain.init({"params": jax.random.PRNGKey(0)}, x, temb, False)))
  variables = _random_params(abstract)
  rngs = {"dropout": jax.random.PRNGKey(1)}
  # `train` given by keyword is bound to its position (jax.checkpoint's static arguments are positional).
  outs = _compiled(lambda v: (block.apply(v, x, temb=temb, train=True, rngs=rngs),
                              plain.apply(v, x, temb, True, rngs=rngs)), variables)(variables)
  np.testing.assert_array_equal(*outs)


# ------------------------------------------------------------------------------------------------------
# training.compute_dtype

def _walk(jaxpr, eqn_fn):
  for eqn in jaxpr.eqns:
    eqn_fn(eqn)
    for sub in jax_core.jaxprs_in_params(eqn.params):
      _walk(sub, eqn_fn)


@pytest.mark.parametrize("module", ALL + ["configs.ve.ffhq_256_ncsnpp_continuous"])
def test_bfloat16_runs_every_conv_in_bfloat16(module):
  """No float32 leaks into the blocks (a float32 time embedding or NumPy scalar would promote them)."""
  config = _tiny(module)
  sde, model = sde_lib.get_sde(config), mutils.create_model(config)
  params = _abstract_params(model, config)
  loss_fn = losses.get_loss_fn_from_config(config, sde, mixed_precision.with_compute_dtype(model, "bfloat16"),
                                           train=True)
  operands = collections.Counter()

  def record(eqn):
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      operands[(eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars))] += 1

  _walk(jax.make_jaxpr(jax.grad(loss_fn))(params, _images(config), jax.random.PRNGKey(0)).jaxpr, record)
  convs = {k: n for k, n in operands.items() if k[0] == "conv_general_dilated"}
  assert set(convs) == {("conv_general_dilated", ("bfloat16", "bfloat16"))}, operands
  # Only the time-embedding MLP (Dense_0, Dense_1: float32 features) multiplies in float32: forward and the
  # two gradient matmuls of each.
  float32_dots = sum(n for k, n in operands.items() if k[0] == "dot_general" and "float32" in k[1])
  assert float32_dots <= 6, operands


def test_fourier_features_stay_float32():
  config = _tiny(NCSNPP)
  params = _random_params(_abstract_params(mutils.create_model(config), config))
  cast = mixed_precision.cast_params(params, jnp.bfloat16)
  assert cast["GaussianFourierProjection_0"]["W"].dtype == jnp.float32
  assert cast["Conv_0"]["kernel"].dtype == cast["Dense_0"]["kernel"].dtype == jnp.bfloat16


def _step(config, model, optimizer, **training):
  config.training.update(training)
  return losses.get_train_step_from_config(config, sde_lib.get_sde(config), model, optimizer)


@pytest.mark.parametrize("module", [DDPMPP, NCSNV2])
def test_bfloat16_loss_is_within_1_percent_of_float32(module):
  config = _tiny(module, dropout=0.0, levels=1)
  sde, model = sde_lib.get_sde(config), mutils.create_model(config)
  params = _random_params(_abstract_params(model, config), std=0.1)
  images = _images(config, n=32)
  fns = [losses.get_loss_fn_from_config(config, sde, mixed_precision.with_compute_dtype(model, d), train=True)
         for d in ("float32", "bfloat16")]
  both = _compiled(lambda p, x, r: [f(p, x, r) for f in fns], params, images, jax.random.PRNGKey(3))
  loss32, loss16 = (float(v) for v in both(params, images, jax.random.PRNGKey(3)))
  assert loss16 != loss32  # it does compute in bfloat16
  assert abs(loss16 - loss32) <= 1e-2 * abs(loss32)


def test_bfloat16_training_keeps_float32_state_and_learns_alike():
  config = _tiny(DDPMPP, dropout=0.0, levels=1)
  config.optim.update(warmup=0, lr=1e-2)
  model = mutils.create_model(config)
  optimizer = losses.get_optimizer(config.optim)
  state = losses.create_train_state(_random_params(_abstract_params(model, config), std=0.1), optimizer)
  batch, rng = {"image": _images(config)}, jax.random.PRNGKey(0)
  steps = [_step(config, model, optimizer, compute_dtype=d) for d in ("float32", "bfloat16")]

  def train_both(state):  # 20 steps on the same batch and rng: the loss must fall
    def body(states, _):
      out = [step(s, batch, rng) for step, s in zip(steps, states)]
      return [s for s, _ in out], [m["loss"] for _, m in out]
    return jax.lax.scan(body, [state, state], None, length=20)

  (_, state16), (curve32, curve16) = _compiled(train_both, state)(state)
  dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(state16) if leaf.ndim}
  assert dtypes == {jnp.dtype(jnp.float32)}, dtypes  # params, EMA, Adam moments
  assert curve32[-1] < 0.8 * curve32[0] and curve16[-1] < 0.8 * curve16[0], (curve32, curve16)
  np.testing.assert_allclose(curve16, curve32, rtol=2e-2)


def test_bad_compute_dtype_is_refused_in_one_line():
  config = _tiny(DDPMPP)
  config.training.compute_dtype = "float16"
  with pytest.raises(ValueError, match=r"^training.compute_dtype='float16' is not one of \['float32', 'bfloat16'\]"):
    losses.check_memory_knobs(config)


# ------------------------------------------------------------------------------------------------------
# training.grad_accum_steps

@pytest.mark.parametrize("module,ks", [(DDPMPP, (2, 4)), (DDPM, (4,)), (NCSNV2, (4,))],
                         ids=["sde_continuous", "ddpm_discrete", "smld_discrete"])
def test_micro_batches_give_the_full_batch_loss_and_gradient(module, ks):
  config = _tiny(module, dropout=0.0, levels=1)
  sde, model = sde_lib.get_sde(config), mutils.create_model(config)
  params = _random_params(_abstract_params(model, config), std=0.1)
  images, rng = _images(config), jax.random.PRNGKey(4)
  objective = losses.get_loss_fn_from_config(config, sde, model, train=True)
  fns = [jax.value_and_grad(objective)] + [losses.accumulated_value_and_grad(objective, k) for k in ks]
  (loss, grads), *accumulated = _compiled(lambda *a: [f(*a) for f in fns], params, images, rng)(params, images, rng)
  for loss_k, grads_k in accumulated:
    np.testing.assert_allclose(loss_k, loss, rtol=1e-6)
    _assert_trees_close(grads_k, grads, rtol=1e-5)


def test_micro_batches_give_the_full_batch_update():
  """The train step: one update (here SGD, linear in the gradient, so that the comparison is well posed: Adam's
  first step is g / |g|, which float rounding flips for gradients near 0) and one EMA update per step."""
  config = _tiny(DDPMPP, dropout=0.0, levels=1)
  model = mutils.create_model(config)
  optimizer = optax.sgd(0.1)
  state = losses.create_train_state(_random_params(_abstract_params(model, config), std=0.1), optimizer)
  batch, rng = {"image": _images(config)}, jax.random.PRNGKey(4)
  steps = [_step(config, model, optimizer, grad_accum_steps=k) for k in (1, 4)]
  (full, full_metrics), (state4, metrics4) = _compiled(lambda s: [f(s, batch, rng) for f in steps], state)(state)
  assert int(state4.step) == 1
  np.testing.assert_allclose(metrics4["loss"], full_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics4["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)
  _assert_trees_close(state4.params, full.params, rtol=1e-5)
  _assert_trees_close(state4.ema_params, full.ema_params, rtol=1e-5)
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(full.params),
                                                              jax.tree_util.tree_leaves(state.params)))
  assert moved > 1e-3  # the update is not trivially zero


def test_micro_batches_partition_the_batch():
  x = jnp.arange(8)
  np.testing.assert_array_equal(losses.micro_batches(x, 2), [[0, 2, 4, 6], [1, 3, 5, 7]])
  np.testing.assert_array_equal(losses.micro_batches(x, 1), [x])


def two_device_check():
  """Run with 2 host devices (test below): micro-batches on both devices give the full batch's loss and
  gradient, and the gradients are all-reduced once per step, after the micro-batch loop."""
  from score_sde import parallel  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 2
  config = _tiny(DDPMPP, dropout=0.0, levels=1)
  sde, model = sde_lib.get_sde(config), mutils.create_model(config)
  mesh = parallel.make_mesh()
  params = jax.device_put(_random_params(_abstract_params(model, config), std=0.1), parallel.replicated(mesh))
  images, rng = jax.device_put(_images(config), parallel.batch_sharding(mesh)), jax.random.PRNGKey(4)
  objective = losses.get_loss_fn_from_config(config, sde, model, train=True)
  loss, grads = jax.jit(jax.value_and_grad(objective))(params, images, rng)
  accumulated = jax.jit(losses.accumulated_value_and_grad(objective, 2))
  loss2, grads2 = accumulated(params, images, rng)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  _assert_trees_close(grads2, grads, rtol=1e-5)
  computation, where = None, []
  for line in accumulated.lower(params, images, rng).compile().as_text().splitlines():
    if line.endswith("{") and not line.startswith(" "):
      computation = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
    if " all-reduce(" in line:
      where.append(computation)
  assert where == ["ENTRY"], where


def test_micro_batches_on_two_devices_all_reduce_once():
  code = "from tests.test_memory_knobs import two_device_check; two_device_check(); print('ok')"
  proc = subprocess.run([sys.executable, "-c", code], env=train_utils.env_with(devices=2), cwd=train_utils.ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("key,value,match", [
    ("grad_accum_steps", 0, r"^training.grad_accum_steps=0 must be >= 1\.$"),
    ("grad_accum_steps", 3, r"^training.batch_size=8 must be a multiple of training.grad_accum_steps x the device "
                            r"count = 3 x 1 "),
    ("grad_accum_steps", 1.5, r"^training.grad_accum_steps=1.5 must be an integer\.$"),
    ("remat", "yes", r"^training.remat='yes' must be True or False\.$"),
])
def test_bad_memory_knobs_are_refused_in_one_line(key, value, match):
  config = _tiny(DDPMPP)
  del config.training[key]  # a value of another type than the default's (as a command-line override can give)
  config.training[key] = value
  with pytest.raises(ValueError, match=match):
    losses.check_memory_knobs(config, num_devices=1)


def test_batch_must_split_over_devices_and_micro_batches():
  config = _tiny(DDPMPP)
  config.training.grad_accum_steps = 4
  losses.check_memory_knobs(config, num_devices=2)  # 8 = 4 x 2
  with pytest.raises(ValueError, match=r"= 4 x 4 "):
    losses.check_memory_knobs(config, num_devices=4)


def test_micro_batches_need_an_objective():
  with pytest.raises(ValueError, match="needs a losses.Objective"):
    losses.get_train_step(lambda p, x, r: jnp.sum(x), losses.get_optimizer(_tiny(DDPMPP).optim), 0.999,
                          grad_accum_steps=2)


def test_train_model_composes_the_knobs():
  model = mutils.create_model(_tiny(DDPMPP))
  assert losses.train_model(model) is model  # the defaults change nothing
  both = losses.train_model(model, remat=True, compute_dtype="bfloat16")
  assert isinstance(both, mixed_precision.ComputeDtype) and both.dtype == jnp.bfloat16 and both.model.remat
  assert not model.remat  # a clone: eval, sampling and likelihoods keep the plain model
  with pytest.raises(ValueError, match="has no rematerialisable blocks"):
    remat.with_remat(nn.Dense(3), True)
