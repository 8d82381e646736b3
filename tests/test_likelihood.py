"""Oracles for probability-flow likelihoods (`score_sde.likelihood`) with closed-form scores (no network).

Gaussian data N(mu_k, s_k^2) per coordinate k has perturbed marginals p_t = N(m(t) mu_k, v_k(t)) with
v_k(t) = m(t)^2 s_k^2 + std(t)^2 (m, std from `sde.marginal_prob`), for VP, sub-VP and VE alike. Its
probability flow is affine per coordinate: it keeps (x_k - m mu_k) / sqrt(v_k) fixed, so the latent is
z* = m(T) mu + sqrt(v(T) / v(eps)) (x - m(eps) mu) and int_eps^T div = 1/2 sum_k log(v_k(T) / v_k(eps)).
Hence log p_eps(x) = log p_T(z*) + int div exactly, and likelihood_fn, which puts the prior in place of
p_T, must return -(log p_eps(x) + log prior(z*) - log p_T(z*)) / (D ln 2) + offset.

Shapes are (B, 1, 1, 4): XLA:CPU is slow on arrays whose minor dimension is 1.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from score_sde import datasets, flow, likelihood, sde_lib
from tests import score_oracles

TAIL = (1, 1, 4)
D = 4
K_SE = 4.0  # Monte Carlo standard errors allowed in statistical checks
MU = np.array([0.3, -0.5, 0.1, 0.7])
SD = np.array([0.2, 0.5, 1.0, 0.05])  # unequal: the flow's Jacobian is diagonal but not isotropic
SDES = {
    "vp": lambda: sde_lib.VPSDE(0.1, 20.0, 1000),
    "subvp": lambda: sde_lib.subVPSDE(0.1, 20.0, 1000),
    "ve": lambda: sde_lib.VESDE(0.01, 50.0, 1000),
}
EPS = 1e-5
centred = lambda v: (v + 1.0) / 2.0
identity = lambda v: v


def _coefficients(sde, t):
  """(m(t), std(t)) as float64 scalars."""
  m, std = sde.marginal_prob(jnp.ones((1,)), jnp.full((1,), t))
  return float(np.asarray(m).ravel()[0]), float(np.asarray(std).ravel()[0])


def gaussian_score(sde, mu=MU, sd=SD):
  return score_oracles.gaussian_score(sde, np.reshape(mu, TAIL), np.reshape(sd, TAIL))


def gaussian_flow(sde, x, mu=MU, sd=SD):
  """Closed forms in float64: (z*, int div per example, log p_eps(x), log p_T(z*)), x of shape (B, D)."""
  m0, s0 = _coefficients(sde, EPS)
  m1, s1 = _coefficients(sde, sde.T)
  v0, v1 = (m0 * sd) ** 2 + s0 ** 2, (m1 * sd) ** 2 + s1 ** 2
  z = m1 * mu + np.sqrt(v1 / v0) * (x - m0 * mu)
  div = 0.5 * np.log(v1 / v0).sum() * np.ones(x.shape[0])
  logp_eps = stats.norm.logpdf(x, m0 * mu, np.sqrt(v0)).sum(1)
  logp_t = stats.norm.logpdf(z, m1 * mu, np.sqrt(v1)).sum(1)
  return z, div, logp_eps, logp_t


def prior_logp(sde, z):
  return np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32).reshape((-1,) + TAIL)), np.float64)


def gaussian_data(n, seed=0):
  return MU + SD * np.random.RandomState(seed).randn(n, D)


def to_batch(x):
  return jnp.asarray(x.reshape((-1,) + TAIL), jnp.float32)


def delta_logp(sde, bpd, z, offset):
  """int div recovered from likelihood_fn's outputs."""
  return -(np.asarray(bpd, np.float64) - offset) * D * np.log(2.0) - prior_logp(sde, z)


# ------------------------------------------------------------------------------------------------ Gaussian data
def check_gaussian_outputs(sde, x, bpd, z):
  """bpd within 1e-3 of the closed form (the solver runs at rtol = atol = 1e-5), z within 5e-4 relative."""
  z_exact, _, logp_eps, logp_t = gaussian_flow(sde, x)
  mismatch = prior_logp(sde, z_exact) - logp_t  # log prior - log p_T at z*: what the prior changes
  expected = -(logp_eps + mismatch) / (D * np.log(2.0)) + 7.0
  np.testing.assert_allclose(np.asarray(bpd), expected, rtol=0, atol=1e-3)
  np.testing.assert_allclose(np.asarray(z).reshape(-1, D), z_exact, rtol=5e-4, atol=1e-4)
  return mismatch


@pytest.mark.parametrize("name", sorted(SDES))
def test_gaussian_bpd_is_the_exact_density_at_eps(name):
  """The exact-trace divergence gives the closed-form bits/dim and latent under VP, sub-VP and VE."""
  sde = SDES[name]()
  x = gaussian_data(16)
  bpd, z, nfe = likelihood.get_likelihood_fn(sde, gaussian_score(sde), centred, hutchinson_type="exact",
                                             eps=EPS)(jax.random.PRNGKey(0), None, to_batch(x))
  mismatch = check_gaussian_outputs(sde, x, bpd, z)
  assert 20 < int(nfe) < 2000
  if name == "ve":  # N(mu, s^2 + 50^2) vs N(0, 50^2): the prior is p_T to a few 1e-2 nats over D = 4
    assert np.all(np.abs(mismatch) < 0.05)


def test_rademacher_bpd_latent_and_nfe():
  """Rademacher probes are exact for a diagonal Jacobian (v_k^2 = 1), so they too give the closed form;
  z is the ODE encoder's latent (up to the two solves' tolerances); nfe counts every evaluation of the
  augmented drift (a host callback counts the score evaluations)."""
  sde = SDES["vp"]()
  base = gaussian_score(sde)
  counted, counter = score_oracles.counting(base)
  x = gaussian_data(16, seed=5)
  bpd, z, nfe = likelihood.get_likelihood_fn(sde, counted, centred, hutchinson_type="Rademacher", eps=EPS)(
      jax.random.PRNGKey(0), None, to_batch(x))
  jax.effects_barrier()
  assert int(nfe) == len(counter) > 20, (int(nfe), len(counter))
  check_gaussian_outputs(sde, x, bpd, z)
  z_enc, _ = flow.get_ode_encoder(sde, base, eps=EPS)(None, to_batch(x))
  np.testing.assert_allclose(np.asarray(z), np.asarray(z_enc), rtol=0, atol=1e-3)


def test_gaussian_probes_are_drawn_once_per_solve():
  """With Gaussian probes v and a diagonal Jacobian, int v^T J v dt = sum_k c_k v_k^2 (c_k = 1/2 log(v_k(T) /
  v_k(eps))): mean sum_k c_k and variance 2 sum_k c_k^2 across examples. Probes redrawn at every evaluation
  would average over the ~50 steps and shrink that variance ~50-fold; a wrong probe law changes it too."""
  sde = SDES["vp"]()
  n = 2048
  x = gaussian_data(n, seed=1)
  fn = likelihood.get_likelihood_fn(sde, gaussian_score(sde), centred, hutchinson_type="Gaussian", eps=EPS)
  bpd, z, _ = fn(jax.random.PRNGKey(3), None, to_batch(x))
  est = delta_logp(sde, bpd, z, 7.0)
  m0, s0 = _coefficients(sde, EPS)
  m1, s1 = _coefficients(sde, sde.T)
  c = 0.5 * np.log(((m1 * SD) ** 2 + s1 ** 2) / ((m0 * SD) ** 2 + s0 ** 2))
  mean, var = c.sum(), 2.0 * (c ** 2).sum()
  assert abs(est.mean() - mean) < K_SE * np.sqrt(var / n), (est.mean(), mean)
  # The sample variance's standard error from the sample's fourth central moment.
  se_var = np.sqrt((np.mean((est - est.mean()) ** 4) - est.var() ** 2) / n)
  assert abs(est.var() - var) < K_SE * se_var, (est.var(), var, se_var)


# ------------------------------------------------------------------------------------------------ mixture data
W1 = np.array([0.5, 0.3, 0.5, 0.4])
MIX_MU = np.array([[0.5, -0.5], [-0.6, 0.5], [-0.3, 0.4], [-0.7, 0.7]])
MIX_SD = np.array([[0.3, 0.2], [0.15, 0.2], [0.2, 0.3], [0.15, 0.15]])
# A fixed rotation: the rotated product mixture has a Jacobian with off-diagonal entries, so neither
# Rademacher nor Gaussian probes are exact and the check against the exact trace is meaningful.
ROT = np.linalg.qr(np.random.RandomState(5).randn(D, D))[0]


def mixture_score(sde, rot=ROT):
  """Exact score of the perturbed law of y = rot u, u a product of 1-D two-component Gaussian mixtures."""
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  log_odds = f32(np.log(W1) - np.log1p(-W1))
  m1, m2, s1, s2 = f32(MIX_MU[:, 0]), f32(MIX_MU[:, 1]), f32(MIX_SD[:, 0]), f32(MIX_SD[:, 1])
  rot = f32(rot)

  def score_fn(params, y, t, rng=None):
    del params, rng
    a, std = sde.marginal_prob(jnp.ones_like(t), t)
    a, std = a[:, None], std[:, None]
    u = y.reshape((-1, D)) @ rot  # rot^T y, row-wise
    v1, v2 = (a * s1) ** 2 + std ** 2, (a * s2) ** 2 + std ** 2
    d1, d2 = u - a * m1, u - a * m2
    r1 = jax.nn.sigmoid(log_odds - 0.5 * jnp.log(v1 / v2) - 0.5 * d1 ** 2 / v1 + 0.5 * d2 ** 2 / v2)
    score_u = -(r1 * d1 / v1 + (1.0 - r1) * d2 / v2)
    return (score_u @ rot.T).reshape(y.shape)

  return score_fn


def mixture_data(n, seed=0, rot=ROT):
  rs = np.random.RandomState(seed)
  first = rs.rand(n, D) < W1
  u = np.where(first, MIX_MU[:, 0], MIX_MU[:, 1]) + np.where(first, MIX_SD[:, 0], MIX_SD[:, 1]) * rs.randn(n, D)
  return jnp.asarray((u @ rot.T).reshape((n,) + TAIL), jnp.float32)


def test_rademacher_is_unbiased_for_the_exact_trace():
  """K copies of each of 3 points in one batch get K independent probes: their mean estimate of int div
  must match the exact trace's within K_SE standard errors (plus 1e-3 nats for the two solves' different
  step sequences), and the probes must actually vary the estimate (off-diagonal Jacobian). (Gaussian
  probes are checked for bias and variance in test_gaussian_probes_are_drawn_once_per_solve.)"""
  sde = SDES["vp"]()
  score = mixture_score(sde)
  points = mixture_data(3, seed=2)
  bpd_exact, z_exact, _ = likelihood.get_likelihood_fn(sde, score, centred, hutchinson_type="exact")(
      jax.random.PRNGKey(0), None, points)
  exact = delta_logp(sde, bpd_exact, z_exact, 7.0)
  k = 512
  tiled = jnp.repeat(points, k, axis=0)
  bpd, z, _ = likelihood.get_likelihood_fn(sde, score, centred, hutchinson_type="Rademacher")(
      jax.random.PRNGKey(1), None, tiled)
  np.testing.assert_allclose(np.asarray(z)[::k], np.asarray(z_exact), rtol=0, atol=1e-3)
  est = delta_logp(sde, bpd, z, 7.0).reshape(3, k)
  se = est.std(1) / np.sqrt(k)
  assert np.all(est.std(1) > 0.05), est.std(1)
  assert np.all(np.abs(est.mean(1) - exact) < K_SE * se + 1e-3), (est.mean(1), exact, se)


# ------------------------------------------------------------------------------------------------ offsets
def test_bpd_offset_from_the_inverse_scaler():
  for centered, offset in ((True, 7.0), (False, 8.0)):
    config = ml_collections.ConfigDict({"data": {"centered": centered}})
    assert likelihood.bpd_offset(datasets.get_data_inverse_scaler(config)) == offset
  assert likelihood.bpd_offset(lambda v: v / 4.0) == 6.0


def test_centred_and_unit_data_give_the_same_data_density():
  """One model in two coordinates. y in [0, 1] space is the image y = (x + 1) / 2 of centred x; VE with halved
  sigmas and score 2 s_c(2y - 1, t) is exactly that image process, so its flow is the image of the centred
  flow (z_u = (z_c + 1) / 2) with the same int div. The two bits/dim must then differ only by the priors'
  disagreement at the two latents (N(0, 25^2) at z_u vs the image of N(0, 50^2)); the factor 2^D of the
  scaler is exactly what the offsets 7 and 8 absorb (a missing or wrong offset is off by a whole bit)."""
  sde_c = sde_lib.VESDE(0.01, 50.0, 1000)
  sde_u = sde_lib.VESDE(0.005, 25.0, 1000)
  score_c = mixture_score(sde_c)
  score_u = lambda params, y, t, rng=None: 2.0 * score_c(params, 2.0 * y - 1.0, t)
  x = mixture_data(16, seed=4, rot=np.eye(D)) * 0.5  # inside [-1, 1]
  bpd_c, z_c, _ = likelihood.get_likelihood_fn(sde_c, score_c, centred, hutchinson_type="exact")(
      jax.random.PRNGKey(0), None, x)
  bpd_u, z_u, _ = likelihood.get_likelihood_fn(sde_u, score_u, identity, hutchinson_type="exact")(
      jax.random.PRNGKey(0), None, (x + 1.0) / 2.0)
  np.testing.assert_allclose(np.asarray(z_u), (np.asarray(z_c) + 1.0) / 2.0, rtol=0, atol=2e-3)
  # log prior_u(z_u) = log prior_c(2 z_u) + D log 2: the Jacobian term cancels against the offsets.
  shift = prior_logp(sde_c, 2.0 * np.asarray(z_u, np.float64)) - prior_logp(sde_c, z_c)
  np.testing.assert_allclose(np.asarray(bpd_u) - np.asarray(bpd_c), -shift / (D * np.log(2.0)),
                             rtol=0, atol=1e-3)


def test_bad_arguments_are_rejected():
  sde = SDES["vp"]()
  score = gaussian_score(sde)
  with pytest.raises(ValueError, match="hutchinson_type"):
    likelihood.get_likelihood_fn(sde, score, centred, hutchinson_type="laplace")
  with pytest.raises(ValueError, match="ODE method"):
    likelihood.get_likelihood_fn(sde, score, centred, method="rk4")
  with pytest.raises(ValueError, match="not affine"):
    likelihood.get_likelihood_fn(sde, score, jnp.tanh)
  with pytest.raises(ValueError, match="increasing"):
    likelihood.get_likelihood_fn(sde, score, lambda v: -v)
  with pytest.raises(ValueError, match="eps"):
    likelihood.get_likelihood_fn(sde, score, centred, eps=0.0)
  with pytest.raises(ValueError, match="float batch"):
    likelihood.get_likelihood_fn(sde, score, centred)(jax.random.PRNGKey(0), None,
                                                      jnp.zeros((2,) + TAIL, jnp.uint8))
