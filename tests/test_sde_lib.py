"""SDE oracles: marginals vs simulation and vs the variance ODE, discrete chains, priors, reverse SDEs."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from score_sde import sde_lib

ALL_SDES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}


def simulate_forward(sde, x0, t_end, n_steps, rng):
  """Euler-Maruyama on sde.sde from t=0 to t_end (scan; midpoint-in-time coefficients to cut the bias)."""
  dt = t_end / n_steps

  def step(x, inputs):
    i, key = inputs
    t = jnp.full((x.shape[0],), (i + 0.5) * dt)
    drift, diffusion = sde.sde(x, t)
    x = x + drift * dt + diffusion[:, None] * jnp.sqrt(dt) * jax.random.normal(key, x.shape)
    return x, None

  keys = jax.random.split(rng, n_steps)
  x, _ = jax.lax.scan(step, x0, (jnp.arange(n_steps), keys))
  return x


@pytest.mark.parametrize("name", sorted(ALL_SDES))
@pytest.mark.parametrize("t_end", [0.1, 0.5, 1.0])
def test_marginal_prob_matches_simulation(name, t_end):
  sde = ALL_SDES[name]()
  n_paths, dim = 20000, 4
  x0 = jnp.full((n_paths, dim), 0.8)
  start = x0
  if name == "ve":
    # VE's std is sigma(t), not sqrt(sigma(t)^2 - sigma_min^2): x(0) already carries sigma_min noise (SMLD).
    start = x0 + sde.sigma_min * jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  x = simulate_forward(sde, start, t_end, 1000, jax.random.PRNGKey(0))
  mean, std = sde.marginal_prob(x0[:1], jnp.array([t_end]))
  emp_mean, emp_std = np.asarray(x.mean(0)), np.asarray(x.std(0))
  n = n_paths
  # Monte Carlo: 5 standard errors, plus a small allowance for the Euler discretisation (O(dt)).
  mean_tol = 5 * float(std[0]) / np.sqrt(n) + 5e-3 * float(std[0])
  std_tol = 5 * float(std[0]) / np.sqrt(2 * n) + 5e-3 * float(std[0])
  np.testing.assert_allclose(emp_mean, float(mean[0, 0]), atol=mean_tol)
  np.testing.assert_allclose(emp_std, float(std[0]), atol=std_tol)


@pytest.mark.parametrize("name", sorted(ALL_SDES))
def test_marginal_variance_solves_the_moment_ode(name):
  """For dx = -b(t)/2 x dt + g dw, the mean obeys dm/dt = -b m/2 and the variance dv/dt = -b v + g^2."""
  sde = ALL_SDES[name]()
  t = jnp.linspace(0.05, 0.95, 19)
  h = 1e-3
  x = jnp.ones((t.shape[0], 1))

  def moments(tt):
    mean, std = sde.marginal_prob(x, tt)
    return mean[:, 0], std ** 2

  (m_p, v_p), (m_m, v_m), (m, v) = moments(t + h), moments(t - h), moments(t)
  dm, dv = (m_p - m_m) / (2 * h), (v_p - v_m) / (2 * h)
  drift, g = sde.sde(x, t)
  k = drift[:, 0]  # drift at x = 1 is the linear coefficient -b(t)/2 (0 for VE)
  np.testing.assert_allclose(dm, k * m, rtol=2e-3, atol=1e-4)
  np.testing.assert_allclose(dv, 2 * k * v + g ** 2, rtol=5e-3, atol=1e-3)


def test_ddpm_prior_matching_term_is_about_1e5_bits_per_dim():
  """DDPM (Ho et al. 2020, §4): L_T = KL(q(x_T | x_0) || N(0, I)) is about 1e-5 bits/dim for x_0 in [-1, 1]."""
  sde = sde_lib.VPSDE()
  x0 = np.random.default_rng(0).uniform(-1, 1, size=(64, 32, 32, 3))
  abar = float(sde.alphas_cumprod[-1])
  kl = 0.5 * (abar * x0 ** 2 + (1 - abar) - 1 - np.log(1 - abar))
  bits_per_dim = kl.mean() / np.log(2)
  assert 5e-6 < bits_per_dim < 2e-5, bits_per_dim
  # The continuous VP SDE at t = T gives the same order of magnitude.
  _, std = sde.marginal_prob(jnp.zeros((1,)), jnp.ones((1,)))
  assert abs(1 - float(std[0]) ** 2 - abar) / abar < 0.1  # exp(-10.05) vs prod(1 - beta_i)


def test_vp_discrete_chain_constants():
  sde = sde_lib.VPSDE(0.1, 20.0, 1000)
  np.testing.assert_allclose(sde.discrete_betas[[0, -1]], [1e-4, 0.02], rtol=1e-6)
  np.testing.assert_allclose(sde.alphas, 1 - sde.discrete_betas, rtol=1e-6)
  np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_discretize_iterates_to_the_discrete_marginals(name):
  """Iterating x_i = x_{i-1} + f + G z exactly (mean and variance) gives the DDPM / SMLD marginals."""
  sde = ALL_SDES[name]()
  n = sde.N
  mean, var = np.float64(1.0), np.float64(0.0)
  means, variances = [], []
  for i in range(n):
    t = jnp.array([i / (n - 1)])
    f, g = sde.discretize(jnp.ones((1, 1)), t)
    a = 1.0 + float(f[0, 0])  # f is linear in x: x + f(x) = a x
    mean, var = a * mean, a * a * var + float(g[0]) ** 2
    means.append(mean)
    variances.append(var)
  if name == "vp":
    np.testing.assert_allclose(means, np.sqrt(sde.alphas_cumprod), rtol=1e-4)
    np.testing.assert_allclose(variances, 1 - sde.alphas_cumprod, rtol=1e-4, atol=1e-7)
  else:
    np.testing.assert_allclose(means, 1.0)
    np.testing.assert_allclose(variances, sde.discrete_sigmas.astype(np.float64) ** 2, rtol=1e-4)
  # And the discrete marginals approach the continuous ones: after step i the chain has integrated the
  # noise schedule up to t = (i + 1) / N; log(1 - beta) = -beta - beta^2 / 2 leaves a gap of ~2% at t = 0.9.
  t = jnp.asarray((np.arange(100, n, 100) + 1) / n, jnp.float32)
  m_c, s_c = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
  np.testing.assert_allclose(np.sqrt(variances)[100::100], s_c, rtol=3e-2)
  np.testing.assert_allclose(np.asarray(means)[100::100], m_c[:, 0], rtol=3e-2)


def test_ve_discrete_sigmas_ascending_and_first_step():
  sde = sde_lib.VESDE(0.01, 50.0, 1000)
  assert np.all(np.diff(sde.discrete_sigmas) > 0)
  np.testing.assert_allclose(sde.discrete_sigmas[[0, -1]], [0.01, 50.0], rtol=1e-5)
  _, g = sde.discretize(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(g[0], 0.01, rtol=1e-5)  # sigma_{-1} = 0
  np.testing.assert_allclose(g[1], np.sqrt(50.0 ** 2 - sde.discrete_sigmas[-2] ** 2), rtol=1e-5)


def test_subvp_uses_euler_maruyama_and_has_unit_corrector_alpha():
  sde = sde_lib.subVPSDE()
  x, t = jnp.ones((2, 3)), jnp.array([0.3, 0.7])
  drift, g = sde.sde(x, t)
  f, G = sde.discretize(x, t)
  np.testing.assert_allclose(f, drift / sde.N, rtol=1e-6)
  np.testing.assert_allclose(G, g * np.sqrt(1 / sde.N), rtol=1e-6)
  np.testing.assert_allclose(sde.corrector_alpha(t), 1.0)
  np.testing.assert_allclose(sde_lib.VPSDE().corrector_alpha(jnp.array([0.0])), 1 - 1e-4, rtol=1e-6)
  # sub-VP's variance is bounded by VP's (Song et al. 2021, §3.4).
  _, s_sub = sde.marginal_prob(x, t)
  _, s_vp = sde_lib.VPSDE().marginal_prob(x, t)
  assert np.all(np.asarray(s_sub) < np.asarray(s_vp))


@pytest.mark.parametrize("name", sorted(ALL_SDES))
def test_prior_sampling_and_logp(name):
  sde = ALL_SDES[name]()
  z = sde.prior_sampling(jax.random.PRNGKey(1), (4096, 2, 2, 3))
  scale = 50.0 if name == "ve" else 1.0
  assert abs(float(z.std()) / scale - 1) < 0.02
  logp = sde.prior_logp(z[:5])
  expected = stats.norm.logpdf(np.asarray(z[:5], np.float64), scale=scale).reshape(5, -1).sum(-1)
  np.testing.assert_allclose(logp, expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL_SDES))
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_sde_and_its_discretisation(name, probability_flow):
  sde = ALL_SDES[name]()
  score_fn = lambda x, t: -x * (1 + t[:, None, None, None])
  rsde = sde.reverse(score_fn, probability_flow=probability_flow)
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 1))
  t = jnp.array([0.2, 0.5, 0.9])
  scale = 0.5 if probability_flow else 1.0
  f, g = sde.sde(x, t)
  rf, rg = rsde.sde(x, t)
  np.testing.assert_allclose(rf, f - (g ** 2)[:, None, None, None] * score_fn(x, t) * scale, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rg, 0.0 if probability_flow else g)
  fd, gd = sde.discretize(x, t)
  rfd, rgd = rsde.discretize(x, t)
  np.testing.assert_allclose(rfd, fd - (gd ** 2)[:, None, None, None] * score_fn(x, t) * scale, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rgd, 0.0 if probability_flow else gd)
  assert rsde.N == sde.N and rsde.T == sde.T


def test_reverse_drift_of_exact_score_keeps_gaussian_marginal():
  """With the exact score of N(0, v(t)), the probability-flow velocity equals d/dt of the moving quantile."""
  sde = sde_lib.VPSDE()
  # Data N(0, 1) under VP stays N(0, 1): the exact score is -x, so the flow drift is 0 (a fixed point).
  rsde = sde.reverse(lambda x, t: -x, probability_flow=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  np.testing.assert_allclose(rsde.sde(x, jnp.full((4,), 0.4))[0], 0.0, atol=1e-6)


def test_get_sde_from_config_and_errors():
  config = ml_collections.ConfigDict({
      "training": {"sde": "vesde"},
      "model": {"sigma_min": 0.02, "sigma_max": 10.0, "num_scales": 7, "beta_min": 0.1, "beta_max": 20.0}})
  sde = sde_lib.get_sde(config)
  assert isinstance(sde, sde_lib.VESDE) and sde.N == 7 and sde.sigma_max == 10.0
  config.training.sde = "VPSDE"
  config.model.num_scales = 100
  assert type(sde_lib.get_sde(config)) is sde_lib.VPSDE
  config.training.sde = "cosine"
  with pytest.raises(ValueError, match=r"training.sde='cosine' is not one of \['subvpsde', 'vesde', 'vpsde'\]"):
    sde_lib.get_sde(config)
  with pytest.raises(ValueError, match="beta_min"):
    sde_lib.VPSDE(beta_min=5.0, beta_max=1.0)
  with pytest.raises(ValueError, match="sigma_min"):
    sde_lib.VESDE(sigma_min=0.0)
  with pytest.raises(ValueError, match="num_scales"):
    sde_lib.VPSDE(N=0)
  with pytest.raises(ValueError, match="num_scales > 20"):
    sde_lib.VPSDE(N=10)


def test_a_new_sde_is_one_registered_class():
  """An Ornstein-Uhlenbeck SDE with constant beta, added in one class, gets reverse/discretize for free."""

  @sde_lib.register_sde("test_ou")
  class OU(sde_lib.SDE):

    def __init__(self, beta=2.0, N=100):
      super().__init__(N)
      self.beta = beta

    @classmethod
    def from_config(cls, config):
      return cls(N=config.model.num_scales)

    def sde(self, x, t):
      return -0.5 * self.beta * x, jnp.full(t.shape, np.sqrt(self.beta))

    def marginal_prob(self, x, t):
      m = jnp.exp(-0.5 * self.beta * t)
      return m[:, None] * x, jnp.sqrt(1 - m ** 2)

    def prior_sampling(self, rng, shape):
      return jax.random.normal(rng, shape)

    def prior_logp(self, z):
      return sde_lib._standard_normal_logp(z)  # pylint: disable=protected-access

  try:
    config = ml_collections.ConfigDict({"training": {"sde": "test_ou"}, "model": {"num_scales": 50}})
    sde = sde_lib.get_sde(config)
    assert sde.N == 50
    f, g = sde.reverse(functools.partial(lambda s, x, t: s * x, -1.0)).discretize(jnp.ones((2, 1)), jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(f, (-0.5 * 2.0 * 1.0 + 2.0) / 50, rtol=1e-6)  # f - G^2 s with s = -x
    with pytest.raises(ValueError, match="already registered"):
      sde_lib.register_sde("test_ou")(OU)
  finally:
    sde_lib._SDES.pop("test_ou")  # pylint: disable=protected-access
