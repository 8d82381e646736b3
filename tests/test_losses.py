"""Losses against closed forms (Gaussian data has an exact score for every SDE), optimizer, EMA, steps."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from score_sde import losses, sde_lib

MU, S0 = 0.5, 0.3          # data ~ N(MU, S0^2) per pixel
SHAPE = (4, 4, 1)           # D = 16 pixels
D = int(np.prod(SHAPE))
SDES = {
    "vp": lambda: sde_lib.VPSDE(),
    "subvp": lambda: sde_lib.subVPSDE(),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0),
}


def gaussian_data(rng, batch):
  return MU + S0 * jax.random.normal(rng, (batch,) + SHAPE)


def mean_coeff_and_std(sde, t):
  mean, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
  return mean[:, 0], std


def exact_score_fn(sde):
  """Score of p_t = N(m(t) MU, m(t)^2 S0^2 + std(t)^2): the minimiser of every denoising loss."""

  def score_fn(params, x, t, rng=None):
    m, std = mean_coeff_and_std(sde, t)
    m, v = m[:, None, None, None], (m ** 2 * S0 ** 2 + std ** 2)[:, None, None, None]
    return -(x - m * MU) / v * (1.0 if params is None else params)

  return score_fn


def mc_loss(loss_fn, params, batch=4096, repeats=8):
  """Monte Carlo loss and its standard error over `repeats` independent batches (the same keys every call)."""
  loss_fn = jax.jit(loss_fn)
  values = []
  for k in range(repeats):
    rng_data, rng_loss = jax.random.split(jax.random.PRNGKey(k))
    values.append(float(loss_fn(params, gaussian_data(rng_data, batch), rng_loss)))
  return np.mean(values), np.std(values, ddof=1) / np.sqrt(repeats)


def optimal_sde_loss(sde, reduce_mean, likelihood_weighting, eps=1e-5):
  """E_t of the per-pixel minimum a/v (a = m^2 S0^2, v = a + std^2), times g^2/std^2 when likelihood-weighted.

  Gauss-Legendre quadrature in log t: the likelihood-weighted VP integrand grows like 1/t near 0.
  """
  nodes, weights = np.polynomial.legendre.leggauss(600)
  lo, hi = np.log(eps), 0.0
  u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
  t = np.exp(u)
  m, std = (np.asarray(a, np.float64) for a in mean_coeff_and_std(sde, jnp.asarray(t, jnp.float32)))
  a = m ** 2 * S0 ** 2
  value = a / (a + std ** 2)
  if likelihood_weighting:
    g = np.asarray(sde.sde(jnp.zeros((t.shape[0], 1)), jnp.asarray(t, jnp.float32))[1], np.float64)
    value = value * g ** 2 / std ** 2
  value = np.sum(0.5 * (hi - lo) * weights * value * t) / (1.0 - eps)
  return value if reduce_mean else 0.5 * D * value


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_continuous_loss_at_the_exact_score_equals_its_closed_form(name, reduce_mean, likelihood_weighting):
  sde = SDES[name]()
  loss_fn = losses.get_sde_loss_fn(sde, exact_score_fn(sde), reduce_mean, likelihood_weighting)
  value, stderr = mc_loss(loss_fn, None)
  expected = optimal_sde_loss(sde, reduce_mean, likelihood_weighting)
  assert abs(value - expected) < 5 * stderr + 1e-3 * expected, (value, expected, stderr)
  # The exact score is the minimiser: a perturbed score does worse on the same noise (paired comparison).
  worse, _ = mc_loss(loss_fn, 0.8)
  assert worse > value * 1.01


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_smld_loss_at_the_exact_score(reduce_mean):
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=50)
  sigmas_desc = sde.discrete_sigmas[::-1]

  def model_fn(params, x, labels, rng=None):
    sigma = jnp.asarray(sigmas_desc)[labels][:, None, None, None]
    return -(x - MU) / (S0 ** 2 + sigma ** 2)

  loss_fn = losses.get_smld_loss_fn(sde, model_fn, reduce_mean)
  value, stderr = mc_loss(loss_fn, None)
  per_pixel = np.mean(S0 ** 2 / (S0 ** 2 + sigmas_desc.astype(np.float64) ** 2))
  expected = per_pixel if reduce_mean else 0.5 * D * per_pixel
  assert abs(value - expected) < 5 * stderr + 1e-3 * expected, (value, expected, stderr)


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_ddpm_loss_at_the_exact_noise_prediction(reduce_mean):
  sde = sde_lib.VPSDE(N=100)
  abar = sde.alphas_cumprod.astype(np.float64)

  def model_fn(params, x, labels, rng=None):
    a = jnp.asarray(abar, jnp.float32)[labels][:, None, None, None]
    score = -(x - jnp.sqrt(a) * MU) / (a * S0 ** 2 + 1 - a)
    return -jnp.sqrt(1 - a) * score  # eps_theta = -std * score

  loss_fn = losses.get_ddpm_loss_fn(sde, model_fn, reduce_mean)
  value, stderr = mc_loss(loss_fn, None)
  per_pixel = np.mean(abar * S0 ** 2 / (abar * S0 ** 2 + 1 - abar))
  expected = per_pixel if reduce_mean else 0.5 * D * per_pixel
  assert abs(value - expected) < 5 * stderr + 1e-3 * expected, (value, expected, stderr)


def test_loss_selection_and_invalid_combinations():
  model = object()  # never called: selection happens before any network evaluation
  with pytest.raises(ValueError, match="likelihood_weighting=True needs training.continuous=True"):
    losses.get_loss_fn(sde_lib.VPSDE(), model, True, continuous=False, likelihood_weighting=True)
  with pytest.raises(ValueError, match="training.continuous=False is defined for"):
    losses.get_loss_fn(sde_lib.subVPSDE(), model, True, continuous=False)
  with pytest.raises(ValueError, match="SMLD loss needs"):
    losses.get_smld_loss_fn(sde_lib.VPSDE(), None)
  with pytest.raises(ValueError, match="DDPM loss needs"):
    losses.get_ddpm_loss_fn(sde_lib.subVPSDE(), None)


# ------------------------------------------------------------------------------------------------ optimizer
def optim_config(**overrides):
  config = ml_collections.ConfigDict(dict(optimizer="Adam", lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0.0,
                                          warmup=5000, grad_clip=1.0))
  config.update(overrides)
  return config


def reference_adam(params, grads_seq, lr, warmup, grad_clip, wd, b1=0.9, b2=0.999, eps=1e-8):
  """The 2021 update in numpy: lr * min(step / warmup, 1) at the pre-increment step, clip, Adam(W)."""
  p, m, v = params.astype(np.float64), np.zeros_like(params, np.float64), np.zeros_like(params, np.float64)
  for step, g in enumerate(grads_seq):
    g = g.astype(np.float64)
    if grad_clip >= 0:
      norm = np.sqrt(np.sum(g ** 2))
      g = g * grad_clip / max(norm, grad_clip)
    lr_t = lr * min(step / warmup, 1.0) if warmup > 0 else lr
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
    m_hat, v_hat = m / (1 - b1 ** (step + 1)), v / (1 - b2 ** (step + 1))
    p = p - lr_t * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
  return p


@pytest.mark.parametrize("warmup,grad_clip,wd", [(3, 1.0, 0.0), (0, -1.0, 0.0), (2, 0.5, 0.1)])
def test_optimizer_matches_the_reference_update(warmup, grad_clip, wd):
  rng = np.random.default_rng(0)
  params = rng.normal(size=(5,)).astype(np.float32)
  grads_seq = [rng.normal(size=(5,)).astype(np.float32) * scale for scale in (10.0, 0.1, 3.0, 0.01, 1.0)]
  opt = losses.get_optimizer(optim_config(lr=0.1, warmup=warmup, grad_clip=grad_clip, weight_decay=wd))
  p, state = jnp.asarray(params), None
  state = opt.init(p)
  for g in grads_seq:
    updates, state = opt.update(jnp.asarray(g), state, p)
    p = p + updates
  np.testing.assert_allclose(p, reference_adam(params, grads_seq, 0.1, warmup, grad_clip, wd), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_clip_by_global_norm_is_the_2021_rule_over_all_leaves(scale):
  rng = np.random.default_rng(1)
  grads = {"a": rng.normal(size=(3, 4)).astype(np.float32) * scale, "b": rng.normal(size=(7,)).astype(np.float32)}
  clip = losses.clip_by_global_norm(2.0)
  clipped, state = clip.update(jax.tree_util.tree_map(jnp.asarray, grads), clip.init(grads))
  norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
  for key, g in grads.items():
    np.testing.assert_allclose(clipped[key], g * 2.0 / max(norm, 2.0), rtol=2e-7)
    if norm < 2.0:  # factor exactly 1: gradients pass bit for bit
      np.testing.assert_array_equal(clipped[key], g)
  if norm >= 2.0:
    np.testing.assert_allclose(optax.tree.norm(clipped), 2.0, rtol=1e-6)
  # The same optimizer-state structure as optax's clip, so checkpoints of either restore into the other.
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(
      optax.clip_by_global_norm(2.0).init(grads))


def test_first_update_has_zero_learning_rate_with_warmup():
  opt = losses.get_optimizer(optim_config())
  p = jnp.ones(3)
  updates, _ = opt.update(jnp.ones(3), opt.init(p), p)
  np.testing.assert_array_equal(updates, 0.0)


def test_unknown_optimizer():
  with pytest.raises(ValueError, match=r"optim.optimizer='SGD' is not one of \['Adam'\]"):
    losses.get_optimizer(optim_config(optimizer="SGD"))


# ---------------------------------------------------------------------------------------------------- steps
def learnable_gaussian_score(sde):
  """score of N(m mu, m^2 s^2 + std^2) with learnable (mu, log s): training should recover MU and S0."""

  def score_fn(params, x, t, rng=None):
    m, std = mean_coeff_and_std(sde, t)
    s2 = jnp.exp(2 * params["log_s"])
    m, v = m[:, None, None, None], (m ** 2 * s2 + std ** 2)[:, None, None, None]
    return -(x - m * params["mu"]) / v

  return score_fn


def test_train_step_recovers_gaussian_data_and_updates_ema():
  sde = sde_lib.VPSDE()
  loss_fn = losses.get_sde_loss_fn(sde, learnable_gaussian_score(sde), reduce_mean=True)
  optimizer = losses.get_optimizer(optim_config(lr=3e-2, warmup=10, grad_clip=1.0))
  ema_rate = 0.9
  state = losses.create_train_state({"mu": jnp.array(0.0), "log_s": jnp.array(0.0)}, optimizer)
  train_step = jax.jit(losses.get_train_step(loss_fn, optimizer, ema_rate))

  def run(state, k):
    batch = {"image": gaussian_data(jax.random.PRNGKey(10_000 + k), 256)}
    return train_step(state, batch, jax.random.PRNGKey(k))

  previous = state
  state, metrics = run(state, 0)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  expected_ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1 - ema_rate) * p, previous.ema_params,
                                        state.params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state.ema_params, expected_ema)
  for k in range(1, 400):
    state, metrics = run(state, k)
  assert abs(float(state.params["mu"]) - MU) < 0.05
  assert abs(float(jnp.exp(state.params["log_s"])) - S0) < 0.05
  # The eval step scores the EMA parameters and leaves the state alone.
  eval_step = jax.jit(losses.get_eval_step(loss_fn))
  same, eval_metrics = eval_step(state, {"image": gaussian_data(jax.random.PRNGKey(7), 256)}, jax.random.PRNGKey(8))
  assert same is state or int(same.step) == int(state.step)
  assert np.isfinite(float(eval_metrics["loss"]))
