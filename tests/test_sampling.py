"""Sampler oracles with closed-form scores (no network).

The data law is a product of four 1-D laws, one per channel of x in (B, 1, 1, 4): two Gaussians and two
two-component Gaussian mixtures. Each channel's perturbed law p_t is again a mixture with components
N(m(t) mu_k, m(t)^2 s_k^2 + std(t)^2) (m, std from `sde.marginal_prob`), so its score is exact for VP,
sub-VP and VE alike. Every sampler must then reproduce the data law: channel means, variances and the mass
below a threshold between the modes (the mixture weight). Tolerances are k Monte Carlo standard errors plus
a stated allowance for each method's known discretisation error.

Shapes: (B, 1, 1, 4) rather than (B, 2, 2, 1) because XLA:CPU is ~5x slower on arrays whose minor
dimension is 1, and this file must stay well under two minutes on two cores.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate, stats

from score_sde import correctors, flow, ode_sampler, pc_sampler, predictors, sampling, sde_lib
from tests import score_oracles

# ------------------------------------------------------------------------------------------------ the data law
# Per channel: weight of component 1 (component 2 gets the rest), means and stds of the two components.
# Channels 0 and 2 are Gaussians (two identical components), 1 and 3 are bimodal.
W1 = np.array([0.5, 0.3, 0.5, 0.5])
MU = np.array([[0.5, 0.5], [-0.6, 0.5], [-0.3, -0.3], [-0.7, 0.7]])
SD = np.array([[0.3, 0.3], [0.15, 0.2], [0.2, 0.2], [0.15, 0.15]])
# Where to measure the mass below: between the modes of the mixtures, at the mean of the Gaussians.
THRESHOLD = np.array([0.5, 0.0, -0.3, 0.0])
TAIL = (1, 1, 4)
K_SE = 4.0  # Monte Carlo standard errors allowed in every statistical check


def mixture_score(sde, w1=W1, mu=MU, sd=SD):
  """The exact score of p_t for the per-channel mixture: score_fn(params, x, t, rng=None)."""
  rs = lambda v: jnp.asarray(v, jnp.float32).reshape(TAIL)
  log_odds = rs(np.log(w1) - np.log1p(-w1))
  m1, m2, s1, s2 = rs(mu[:, 0]), rs(mu[:, 1]), rs(sd[:, 0]), rs(sd[:, 1])

  def score_fn(params, x, t, rng=None):
    del params, rng
    a, std = sde.marginal_prob(jnp.ones_like(t), t)
    a, std = a.reshape((-1, 1, 1, 1)), std.reshape((-1, 1, 1, 1))
    v1, v2 = (a * s1) ** 2 + std ** 2, (a * s2) ** 2 + std ** 2
    d1, d2 = x - a * m1, x - a * m2
    # Responsibility of component 1 as a sigmoid of the log-density difference (cheaper than a softmax).
    r1 = jax.nn.sigmoid(log_odds - 0.5 * jnp.log(v1 / v2) - 0.5 * d1 ** 2 / v1 + 0.5 * d2 ** 2 / v2)
    return -(r1 * d1 / v1 + (1.0 - r1) * d2 / v2)

  return score_fn


def data_moments():
  w = np.stack([W1, 1 - W1], axis=1)
  mean = (w * MU).sum(1)
  var = (w * (SD ** 2 + MU ** 2)).sum(1) - mean ** 2
  below = (w * stats.norm.cdf((THRESHOLD[:, None] - MU) / SD)).sum(1)
  return mean, var, below


def sample_data(rng, n):
  k1, k2 = jax.random.split(rng)
  first = jax.random.uniform(k1, (n,) + TAIL) < W1
  mu = np.where(first, MU[:, 0], MU[:, 1])
  sd = np.where(first, SD[:, 0], SD[:, 1])
  return jnp.asarray(mu + sd * np.asarray(jax.random.normal(k2, (n,) + TAIL)), jnp.float32)


def assert_matches_data(x, mean_allow=0.02, var_allow=0.02, mass_allow=0.01, what=""):
  """Channel means, variances and mass below THRESHOLD vs the data law.

  Tolerance = K_SE standard errors (from the sample: sd/sqrt(n) for the mean, sqrt((m4 - var^2)/n) for the
  variance, sqrt(p(1-p)/n) for the mass) + an allowance: mean_allow in units of the data sd, var_allow
  relative to the data variance, mass_allow absolute.
  """
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  n = x.shape[0]
  mean, var, below = data_moments()
  assert np.all(np.isfinite(x)), what
  m, v = x.mean(0), x.var(0)
  m4 = ((x - m) ** 4).mean(0)
  p = (x < THRESHOLD).mean(0)
  tol_m = K_SE * np.sqrt(v / n) + mean_allow * np.sqrt(var)
  tol_v = K_SE * np.sqrt((m4 - v ** 2) / n) + var_allow * var
  tol_p = K_SE * np.sqrt(below * (1 - below) / n) + mass_allow
  msg = f"{what}: mean {m} vs {mean}, var {v} vs {var}, mass {p} vs {below}"
  assert np.all(np.abs(m - mean) <= tol_m), msg
  assert np.all(np.abs(v - var) <= tol_v), msg
  assert np.all(np.abs(p - below) <= tol_p), msg


SDES = {
    "vp": lambda n=1000: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "subvp": lambda n=1000: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "ve": lambda n=1000: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=n),
}
identity = lambda x: x
B = 16384

# ------------------------------------------------------------------------------------------------ PC matrix
# Allowances (see assert_matches_data), from each method's known bias:
# - P1000 (Euler-Maruyama, reverse diffusion, ancestral): first-order weak error of the SDE schemes, and the
#   sampler stopping at eps: ~1% of the variance here. Allow 2%.
# - Langevin corrector at snr r: the unadjusted Langevin step eps = 2 r^2 v on a Gaussian of variance v has
#   stationary variance v / (1 - r^2), i.e. r^2 = 2.6% too wide at r = 0.16. Allow r^2 + 1.5%.
# - Probability flow by reverse diffusion (deterministic Euler on the flow ODE): first-order error with a large
#   constant (log(sigma_max/sigma_min)^2 / N for VE), 5-8% of the variance at N = 1000 (the paper's P1000 flow
#   FIDs are poor for the same reason). Allow 10% here; `test_probability_flow_converges_at_first_order`
#   checks that this error is O(1/N) against the exact flow.
# - C-only Langevin (VE, the paper's C setting): r^2 + 1.5% on the variance, 2% on the mode mass (mass only
#   moves between modes while sigma is large).
# - C-only ALD in NCSN's regime (few noise levels, many steps each, snr 0.316: eps = 0.2 sigma^2): the chain
#   freezes once sigma << data sd, leaving up to r^2 sigma^2 / v ~ 5% extra variance. Allow 6%.
P_ALLOW = dict(var_allow=0.02)
def pc_allow(snr):
  return dict(var_allow=snr ** 2 + 0.015)


PC_CASES = [
    # (sde, predictor, corrector, probability_flow, N, n_steps, snr, allowances)
    ("vp", "euler_maruyama", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("vp", "reverse_diffusion", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("vp", "ancestral_sampling", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("vp", "reverse_diffusion", "langevin", False, 1000, 1, 0.16, pc_allow(0.16)),
    ("vp", "ancestral_sampling", "langevin", False, 1000, 1, 0.16, pc_allow(0.16)),
    ("vp", "reverse_diffusion", "none", True, 1000, 1, 0.16, dict(var_allow=0.10, mass_allow=0.02)),
    ("subvp", "euler_maruyama", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("subvp", "reverse_diffusion", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("subvp", "reverse_diffusion", "langevin", False, 1000, 1, 0.16, pc_allow(0.16)),
    ("subvp", "reverse_diffusion", "ald", False, 1000, 1, 0.16, pc_allow(0.16)),
    ("subvp", "reverse_diffusion", "none", True, 1000, 1, 0.16, dict(var_allow=0.10, mass_allow=0.02)),
    ("ve", "euler_maruyama", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("ve", "reverse_diffusion", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("ve", "ancestral_sampling", "none", False, 1000, 1, 0.16, P_ALLOW),
    ("ve", "reverse_diffusion", "langevin", False, 1000, 1, 0.16, pc_allow(0.16)),
    ("ve", "ancestral_sampling", "langevin", False, 1000, 1, 0.16, pc_allow(0.16)),
    ("ve", "reverse_diffusion", "none", True, 1000, 1, 0.16, dict(var_allow=0.10, mass_allow=0.02)),
    ("ve", "none", "langevin", False, 1000, 1, 0.16, dict(var_allow=0.16 ** 2 + 0.015, mass_allow=0.02)),
    ("ve", "none", "ald", False, 100, 20, 0.316, dict(var_allow=0.06, mass_allow=0.02)),
]


@pytest.mark.parametrize("case", PC_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}{'-flow' if c[3] else ''}")
def test_pc_sampler_reproduces_data(case):
  name, predictor, corrector, use_flow, n, n_steps, snr, allow = case
  sde = SDES[name](n)
  sampler = pc_sampler.get_pc_sampler(sde, mixture_score(sde), (B,) + TAIL, predictor, corrector, identity,
                                      snr=snr, n_steps=n_steps, probability_flow=use_flow,
                                      eps=sde.default_sampling_eps)
  x, nfe = sampler(jax.random.PRNGKey(0), None)
  assert x.shape == (B,) + TAIL
  # NFE counts actual score evaluations: 0 for 'none' (the 2021 code reported N (n_steps + 1) regardless).
  expected_nfe = n * ((predictor != "none") + (corrector != "none") * n_steps)
  assert int(nfe) == expected_nfe
  assert_matches_data(x, what=str(case), **allow)


def test_denoise_returns_the_last_mean_and_scaler_is_applied():
  sde = SDES["ve"](50)
  kwargs = dict(snr=0.16, eps=1e-5)
  shape = (64,) + TAIL
  noisy = pc_sampler.get_pc_sampler(sde, mixture_score(sde), shape, "reverse_diffusion", "none", identity,
                                    denoise=False, **kwargs)
  clean = pc_sampler.get_pc_sampler(sde, mixture_score(sde), shape, "reverse_diffusion", "none",
                                    lambda x: 2 * x + 1, denoise=True, **kwargs)
  rng = jax.random.PRNGKey(5)
  x_noisy, _ = noisy(rng, None)
  x_clean, _ = clean(rng, None)
  x_clean = (x_clean - 1) / 2
  # The last step (i = 0, sigma_{-1} = 0) adds noise of std sigma_min = 0.01: the two differ by exactly that.
  diff = np.asarray(x_noisy - x_clean)
  assert 0.005 < diff.std() < 0.02
  assert np.abs(diff.mean()) < 0.005


# ------------------------------------------------------------------------------------------------ EM weak order
def _vp_coefficients(t, s, beta_min=0.1, beta_max=20.0):
  """(mean coefficient a(t), variance v(t) of p_t for data N(mu, s^2), beta(t)) of the VP SDE."""
  lmc = -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min
  return np.exp(lmc), np.exp(2 * lmc) * s * s - np.expm1(2 * lmc), beta_min + t * (beta_max - beta_min)


def _vp_reverse_moments(mu, s):
  """Exact mean/variance at t = 0 of the reverse VP SDE with the Gaussian-data score, started from the
  prior N(0, 1) at T = 1: linear moment ODEs in tau = 1 - t, solved to 1e-12."""

  def rhs(tau, y):
    a, v, beta = _vp_coefficients(1.0 - tau, s)
    lin = beta / 2 - beta / v  # dx/dtau = lin x + beta a mu / v + sqrt(beta) dW
    return [lin * y[0] + beta * a * mu / v, 2 * lin * y[1] + beta]

  sol = integrate.solve_ivp(rhs, (0.0, 1.0), [0.0, 1.0], method="DOP853", rtol=1e-12, atol=1e-12)
  return sol.y[0, -1], sol.y[1, -1]


def _em_chain_moments(mu, s, n):
  """Mean/variance of the Euler-Maruyama chain itself (times linspace(1, 0, n), dt = -1/n), in float64: the
  chain is affine in x with Gaussian noise, so its moments follow a two-line recursion."""
  m, v = 0.0, 1.0
  for t in np.linspace(1.0, 0.0, n):
    a, var_t, beta = _vp_coefficients(t, s)
    gain = 1 + beta / (2 * n) - beta / (n * var_t)
    m, v = gain * m + beta * a * mu / (n * var_t), gain * gain * v + beta / n
  return m, v


def test_euler_maruyama_has_weak_order_one():
  """Gaussian data N(2, 0.5^2), VP SDE, exact score, eps = 0. (i) The sampler's mean and variance match the
  EM chain's own moments (exact recursion) within Monte Carlo error; (ii) their errors against the exact
  reverse-SDE solution shrink like 1/N (N * error ~ 0.84 for the mean, 0.42-0.53 for the variance)."""
  mu, s = 2.0, 0.5
  mean_ref, var_ref = _vp_reverse_moments(mu, s)
  n_samples = 2 ** 18  # x 4 identical channels = 1,048,576 draws: SE 4.9e-4 (mean), 3.5e-4 (variance)
  gauss = functools.partial(mixture_score, w1=np.full(4, 0.5), mu=np.full((4, 2), mu), sd=np.full((4, 2), s))
  ns = np.array([24, 48, 96, 192])  # the VP chain needs N > beta_max = 20
  errors = []
  for n in ns:
    sde = SDES["vp"](int(n))
    sampler = pc_sampler.get_pc_sampler(sde, gauss(sde), (n_samples,) + TAIL, "euler_maruyama", "none",
                                        identity, snr=0.0, eps=0.0, denoise=False)
    x = np.asarray(sampler(jax.random.PRNGKey(int(n)), None)[0], np.float64).ravel()
    m, v = x.mean(), x.var()
    se_m, se_v = np.sqrt(v / x.size), v * np.sqrt(2.0 / x.size)
    chain_m, chain_v = _em_chain_moments(mu, s, int(n))
    assert abs(m - chain_m) < K_SE * se_m and abs(v - chain_v) < K_SE * se_v, (n, m, chain_m, v, chain_v)
    errors.append((m - mean_ref, v - var_ref, se_m, se_v))
  errors = np.array(errors)
  for col, se_col, (lo, hi) in ((0, 2, (0.6, 1.1)), (1, 3, (0.3, 0.75))):
    err, se = errors[:, col], errors[:, se_col]
    assert np.all(err > 5 * se), errors  # resolved at every N, so the fitted slope is meaningful
    slope = np.polyfit(np.log(ns), np.log(err), 1)[0]
    assert -1.2 < slope < -0.8, (slope, errors)
    assert np.all((ns * (err + K_SE * se) > lo) & (ns * (err - K_SE * se) < hi)), (ns * err, errors)


# ------------------------------------------------------------------------------------------------ probability flow
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_probability_flow_converges_at_first_order(name):
  """From the same latents, the reverse-diffusion flow sampler approaches the exact flow map (the ODE sampler
  at tight tolerance) with RMS error halving as N doubles."""
  shape = (2048,) + TAIL
  sde = SDES[name]()
  z = sde.prior_sampling(jax.random.PRNGKey(3), shape)
  ode = ode_sampler.get_ode_sampler(sde, mixture_score(sde), shape, identity, rtol=1e-6, atol=1e-6, eps=1e-5)
  x_ref = np.asarray(ode(None, None, z)[0])
  rms = []
  for n in (250, 500):
    sde_n = SDES[name](n)
    pc = pc_sampler.get_pc_sampler(sde_n, mixture_score(sde_n), shape, "reverse_diffusion", "none", identity,
                                   snr=0.0, probability_flow=True, eps=1e-5)
    x = np.asarray(pc(jax.random.PRNGKey(0), None, z)[0])
    rms.append(np.sqrt(np.mean((x - x_ref) ** 2, axis=0)).ravel())
  ratio = rms[0] / rms[1]
  assert np.all((ratio > 1.7) & (ratio < 2.3)), (rms, ratio)
  assert np.all(rms[1] < 0.03), rms


# ------------------------------------------------------------------------------------------------ ODE sampler
@pytest.mark.parametrize("name", sorted(SDES))
def test_ode_sampler_reproduces_data(name):
  sde = SDES[name]()
  sampler = ode_sampler.get_ode_sampler(sde, mixture_score(sde), (B,) + TAIL, identity,
                                        eps=sde.default_sampling_eps)
  x, nfe = sampler(jax.random.PRNGKey(1), None)
  # The flow is solved to 1e-5: only the Monte Carlo error and the stop at eps remain; allow 1% variance.
  assert_matches_data(x, var_allow=0.01, what=name)
  assert 30 < int(nfe) < 1000


def test_ode_encode_decode_round_trip():
  """Data -> latent (eps -> T) -> data (T -> eps) with the same flow returns the input to solver accuracy,
  and encoding the data distribution gives (nearly) the prior: p_T of VP is N(0, 1) up to e^{-5}."""
  sde = SDES["vp"]()
  score = mixture_score(sde)
  x = sample_data(jax.random.PRNGKey(7), 4096)
  encode = flow.get_ode_encoder(sde, score, eps=1e-3)
  decode = ode_sampler.get_ode_sampler(sde, score, x.shape, identity, eps=1e-3)
  z, nfe_enc = encode(None, x)
  x_back, nfe_dec = decode(None, None, z)
  err = np.abs(np.asarray(x_back - x)).reshape(-1, 4)
  # Gaussian channels (0, 2): the flow is linear there, the round trip is good to the tolerance (1e-5).
  assert np.all(err[:, [0, 2]].max(0) < 3e-5), err.max(0)
  # Mixture channels (1, 3): the flow stretches the low-density gap between the modes, amplifying the
  # per-solve error for the few points there (worst ~3e-2 at 1e-5 tolerances); the RMS stays < 1e-3.
  assert np.all(np.sqrt((err ** 2).mean(0)) < 1e-3), np.sqrt((err ** 2).mean(0))
  assert np.quantile(err, 0.99) < 1e-3
  zf = np.asarray(z).reshape(-1)
  assert abs(zf.mean()) < K_SE / np.sqrt(zf.size) + 0.01
  assert abs(zf.var() - 1) < K_SE * np.sqrt(2 / zf.size) + 0.01
  assert int(nfe_enc) > 30 and int(nfe_dec) > 30


@pytest.mark.parametrize("method", flow.solver_names())
def test_ode_nfe_formula_matches_an_explicit_count(method):
  """The NFE reported from diffrax's step statistics equals the number of drift evaluations, counted with a
  host callback (used only here)."""
  sde = SDES["vp"]()
  counted, counter = score_oracles.counting(mixture_score(sde))

  sampler = ode_sampler.get_ode_sampler(sde, counted, (8,) + TAIL, identity, method=method, rtol=1e-4, atol=1e-4)
  _, nfe = sampler(jax.random.PRNGKey(0), None)
  jax.effects_barrier()
  assert int(nfe) == len(counter) > 0


def test_ode_sampler_agrees_with_scipy_rk45():
  """Gaussian data: the in-jit Dopri5 and the 2021-style scipy RK45 (both rtol = atol = 1e-5, the same
  Dormand-Prince pair and RMS error norm) map the same latents to the same samples, with similar NFE."""
  sde = SDES["vp"]()
  gauss = mixture_score(sde, w1=np.full(4, 0.5), mu=np.stack([MU[0]] * 4), sd=np.stack([SD[0]] * 4))
  shape = (256,) + TAIL
  z = sde.prior_sampling(jax.random.PRNGKey(11), shape)
  x_jax, nfe_jax = ode_sampler.get_ode_sampler(sde, gauss, shape, identity)(None, None, z)
  scipy_sampler = ode_sampler.get_ode_sampler(sde, gauss, shape, identity, method="scipy_rk45")
  x_np, nfe_np = scipy_sampler(None, None, z)
  np.testing.assert_allclose(np.asarray(x_jax), np.asarray(x_np), atol=1e-3)
  assert isinstance(nfe_np, int)
  assert 0.5 < int(nfe_jax) / nfe_np < 2.0, (int(nfe_jax), nfe_np)
  # Both map N(0, 1) onto N(0.5, 0.3^2) (exact flow of a Gaussian): 256 x 4 draws, 4 SE.
  for x in (x_jax, x_np):
    x = np.asarray(x).ravel()
    assert abs(x.mean() - 0.5) < K_SE * 0.3 / np.sqrt(x.size) + 0.005
    assert abs(x.std() / 0.3 - 1) < K_SE / np.sqrt(2 * x.size) + 0.005


def test_ode_denoise_is_one_reverse_diffusion_mean_step():
  sde = SDES["ve"]()
  score = mixture_score(sde)
  shape = (32,) + TAIL
  z = sde.prior_sampling(jax.random.PRNGKey(2), shape)
  x_raw, n1 = ode_sampler.get_ode_sampler(sde, score, shape, identity, eps=1e-5)(None, None, z)
  x_den, n2 = ode_sampler.get_ode_sampler(sde, score, shape, identity, denoise=True, eps=1e-5)(None, None, z)
  t = jnp.full((shape[0],), 1e-5)
  i = 0  # floor(1e-5 * 999) = 0: the step from sigma_min to sigma_{-1} = 0
  expected = x_raw + sde.discrete_sigmas[i] ** 2 * score(None, x_raw, t)
  np.testing.assert_allclose(np.asarray(x_den), np.asarray(expected), rtol=1e-5, atol=1e-6)
  assert int(n1) == int(n2)


# ------------------------------------------------------------------------------------------------ registries
@predictors.register_predictor(name="test_heun_flow")
class HeunFlowPredictor(predictors.Predictor):
  """A user-defined predictor: Heun's (second-order) step of the probability flow on the sampler's grid,
  linspace(T, EPS, N), finishing at t = 0. Two score evaluations per step."""

  evals_per_step = 2
  EPS = 1e-5

  def update_fn(self, rng, params, x, t):
    rev = self.sde.reverse(lambda y, s: self.score_fn(params, y, s), probability_flow=True)
    h = (self.sde.T - self.EPS) / (self.sde.N - 1)
    dt = -jnp.minimum(h, t)  # the last step (t = EPS) goes to 0
    k1 = rev.sde(x, t)[0]
    k2 = rev.sde(x + k1 * dt[:, None, None, None], t + dt)[0]
    x = x + 0.5 * (k1 + k2) * dt[:, None, None, None]
    return x, x


def test_new_predictor_is_one_decorated_class():
  assert "test_heun_flow" in predictors.registered_predictors()
  assert predictors.get_predictor("test_heun_flow") is HeunFlowPredictor
  assert predictors.get_predictor(HeunFlowPredictor) is HeunFlowPredictor
  sde = SDES["vp"](100)
  shape = (1024,) + TAIL
  z = sde.prior_sampling(jax.random.PRNGKey(4), shape)
  x_ref = ode_sampler.get_ode_sampler(sde, mixture_score(sde), shape, identity, rtol=1e-6, atol=1e-6,
                                      eps=0.0)(None, None, z)[0]
  errs = {}
  for predictor in ("test_heun_flow", HeunFlowPredictor, "reverse_diffusion"):
    sampler = pc_sampler.get_pc_sampler(sde, mixture_score(sde), shape, predictor, "none", identity, snr=0.0,
                                        probability_flow=True, eps=HeunFlowPredictor.EPS)
    x, nfe = sampler(jax.random.PRNGKey(0), None, z)
    assert int(nfe) == 100 * (1 if predictor == "reverse_diffusion" else 2)
    errs[predictor if isinstance(predictor, str) else "class"] = float(jnp.sqrt(jnp.mean((x - x_ref) ** 2)))
  # Same sampler by name or by class; Heun at 100 steps beats Euler at 100 steps by far.
  assert errs["test_heun_flow"] == errs["class"]
  assert errs["test_heun_flow"] < 0.1 * errs["reverse_diffusion"], errs
  assert errs["test_heun_flow"] < 5e-3, errs


def test_registry_errors_are_clear():
  with pytest.raises(ValueError, match=r"sampling\.predictor.*euler_maruyama"):
    predictors.get_predictor("euler")
  with pytest.raises(ValueError, match=r"sampling\.corrector.*langevin"):
    correctors.get_corrector("langevine")
  sde = SDES["vp"](50)
  with pytest.raises(ValueError, match=r"sampling\.predictor"):
    pc_sampler.get_pc_sampler(sde, mixture_score(sde), (4,) + TAIL, "nope", "none", identity, snr=0.1)
  with pytest.raises(ValueError, match=r"sampling\.corrector"):
    pc_sampler.get_pc_sampler(sde, mixture_score(sde), (4,) + TAIL, "none", "nope", identity, snr=0.1)
  with pytest.raises(ValueError, match="already registered"):
    predictors.register_predictor(name="euler_maruyama")(HeunFlowPredictor)
  with pytest.raises(TypeError):
    correctors.register_corrector(name="not_a_corrector")(HeunFlowPredictor)
  with pytest.raises(ValueError, match="dopri5"):
    ode_sampler.get_ode_sampler(sde, mixture_score(sde), (4,) + TAIL, identity, method="rk4")
  with pytest.raises(ValueError, match="dopri5"):
    flow.get_ode_encoder(sde, mixture_score(sde), method="rk4")


def test_ancestral_sampling_refuses_what_it_cannot_do():
  sub = SDES["subvp"](50)
  with pytest.raises(ValueError, match="subVPSDE"):
    pc_sampler.get_pc_sampler(sub, mixture_score(sub), (4,) + TAIL, "ancestral_sampling", "none", identity,
                              snr=0.1)
  vp = SDES["vp"](50)
  with pytest.raises(ValueError, match="probability"):
    pc_sampler.get_pc_sampler(vp, mixture_score(vp), (4,) + TAIL, "ancestral_sampling", "none", identity,
                              snr=0.1, probability_flow=True)


def test_langevin_alpha_per_sde():
  """VP uses the DDPM alphas (Algorithm 5); VE and sub-VP (which has no chain) use 1."""
  t = jnp.array([1.0, 0.5, 1e-3])
  vp, sub, ve = SDES["vp"](), SDES["subvp"](), SDES["ve"]()
  np.testing.assert_allclose(vp.corrector_alpha(t), vp.alphas[[999, 499, 0]])
  np.testing.assert_allclose(sub.corrector_alpha(t), 1.0)
  np.testing.assert_allclose(ve.corrector_alpha(t), 1.0)


def test_langevin_step_uses_batch_averaged_norms():
  """One Langevin step by hand: eps = 2 alpha (snr mean_b|z_b| / mean_b|s_b|)^2 with the same noise."""
  sde = SDES["vp"]()
  score = mixture_score(sde)
  corrector = correctors.get_corrector("langevin")(sde, score, snr=0.2, n_steps=1)
  x = sample_data(jax.random.PRNGKey(1), 16)
  t = jnp.full((16,), 0.3)
  rng = jax.random.PRNGKey(9)
  x_new, x_mean = corrector.update_fn(rng, None, x, t)
  noise = jax.random.normal(jax.random.split(rng)[1], x.shape)
  grad = score(None, x, t)
  norm = lambda v: np.mean(np.linalg.norm(np.asarray(v).reshape(16, -1), axis=1))
  alpha = sde.alphas[int(0.3 * 999)]
  step = 2 * alpha * (0.2 * norm(noise) / norm(grad)) ** 2
  np.testing.assert_allclose(x_mean, x + step * grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(x_new, x + step * grad + np.sqrt(2 * step) * noise, rtol=1e-5, atol=1e-6)


def _one_step_by_hand(kind, sde, score, x, t, rng):
  """One predictor update (Song et al. 2021, App. E-F) written out with numpy, with the noise the step class
  draws from `rng`."""
  b = x.shape[0]
  s = np.asarray(score(None, x, t))
  x = np.asarray(x)
  i = np.floor(np.asarray(t) * (sde.N - 1) / sde.T).astype(int)[:, None, None, None]
  z = np.asarray(jax.random.normal(rng, x.shape))
  if kind == "ancestral_vp":
    beta = sde.discrete_betas[i]
    mean = (x + beta * s) / np.sqrt(1 - beta)
    return mean + np.sqrt(beta) * z, mean
  if kind == "ancestral_ve":
    sig = sde.discrete_sigmas[i]
    prev = np.where(i == 0, 0.0, sde.discrete_sigmas[np.maximum(i - 1, 0)])
    mean = x + (sig ** 2 - prev ** 2) * s
    return mean + np.sqrt(prev ** 2 * (sig ** 2 - prev ** 2) / sig ** 2) * z, mean
  if kind == "reverse_diffusion_vp":
    beta = sde.discrete_betas[i]
    mean = x - (np.sqrt(1 - beta) * x - x - beta * s)
    return mean + np.sqrt(beta) * z, mean
  if kind == "euler_maruyama_ve":
    g2 = np.asarray(sde.sde(jnp.asarray(x), t)[1])[:, None, None, None] ** 2
    mean = x + g2 * s / sde.N  # drift (0 - g^2 s) times dt = -1/N
    return mean + np.sqrt(g2 / sde.N) * z, mean
  if kind.startswith("ald"):
    z = np.asarray(jax.random.normal(jax.random.split(rng)[1], x.shape))  # the corrector's loop key
    std = np.asarray(sde.marginal_prob(jnp.zeros_like(jnp.asarray(x)), t)[1])[:, None, None, None]
    alpha = np.asarray(sde.corrector_alpha(t))[:, None, None, None]
    step = 2 * alpha * (0.3 * std) ** 2
    mean = x + step * s
    return mean + np.sqrt(2 * step) * z, mean
  raise ValueError(kind)


@pytest.mark.parametrize("kind,sde_name,step_name", [
    ("ancestral_vp", "vp", "ancestral_sampling"), ("ancestral_ve", "ve", "ancestral_sampling"),
    ("reverse_diffusion_vp", "vp", "reverse_diffusion"), ("euler_maruyama_ve", "ve", "euler_maruyama"),
    ("ald_vp", "vp", "ald"), ("ald_subvp", "subvp", "ald"), ("ald_ve", "ve", "ald")])
def test_one_step_matches_the_published_update(kind, sde_name, step_name):
  sde = SDES[sde_name]()
  score = mixture_score(sde)
  x = sample_data(jax.random.PRNGKey(2), 6) * 3.0
  t = jnp.array([1.0, 0.7, 0.31, 0.05, 2e-3, 1e-5])  # includes the i = 0 step (sigma_{-1} = 0)
  rng = jax.random.PRNGKey(8)
  if kind.startswith("ald"):
    step = correctors.get_corrector(step_name)(sde, score, snr=0.3, n_steps=1)
  else:
    step = predictors.get_predictor(step_name)(sde, score, probability_flow=False)
  x_new, x_mean = step.update_fn(rng, None, x, t)
  want_x, want_mean = _one_step_by_hand(kind, sde, score, x, t, rng)
  np.testing.assert_allclose(np.asarray(x_mean), want_mean, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(np.asarray(x_new), want_x, rtol=2e-5, atol=2e-6)


_SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from score_sde import correctors, sde_lib
assert jax.device_count() == 2
sde = sde_lib.VESDE()
var = lambda t: sde.marginal_prob(jnp.zeros(t.shape), t)[1][:, None, None, None] ** 2
score = lambda params, x, t, rng=None: -x * jnp.arange(1, x.shape[0] + 1)[:, None, None, None] / var(t)
corr = correctors.get_corrector("langevin")(sde, score, snr=0.16, n_steps=3)
x = jax.random.normal(jax.random.PRNGKey(0), (8, 1, 1, 4))
t = jnp.full((8,), 0.4)
step = jax.jit(lambda x: corr.update_fn(jax.random.PRNGKey(1), None, x, t))
whole = step(x)
mesh = Mesh(np.array(jax.devices()), ("batch",))
sharded = step(jax.device_put(x, NamedSharding(mesh, P("batch"))))
assert len(sharded[0].sharding.device_set) == 2
for a, b in zip(whole, sharded):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
# Per-shard statistics would differ: the example scales grow along the batch.
print("ok")
"""


def test_langevin_norms_are_global_under_batch_sharding():
  """With the batch split over two (simulated CPU) devices, the jitted corrector gives exactly the
  single-device result: its norm averages are global, not per shard."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, cwd=root, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ from config
def _config(method, predictor="reverse_diffusion", corrector="langevin"):
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({"continuous": True})
  config.sampling = ml_collections.ConfigDict({
      "method": method, "predictor": predictor, "corrector": corrector, "snr": 0.16, "n_steps_each": 2,
      "probability_flow": False, "noise_removal": True})
  return config


def test_get_sampling_fn():
  sde = SDES["ve"](20)
  shape = (8,) + TAIL
  pc = sampling.get_sampling_fn(_config("pc"), sde, mixture_score(sde), shape, identity, eps=1e-5)
  x, nfe = pc(jax.random.PRNGKey(0), None)
  assert x.shape == shape and int(nfe) == 20 * (1 + 2)
  ode = sampling.get_sampling_fn(_config("ode"), sde, mixture_score(sde), shape, identity, eps=1e-5)
  x, nfe = ode(jax.random.PRNGKey(0), None)
  assert x.shape == shape and int(nfe) > 0
  with pytest.raises(ValueError, match=r"sampling\.method"):
    sampling.get_sampling_fn(_config("sde"), sde, mixture_score(sde), shape, identity, eps=1e-5)
  with pytest.raises(ValueError, match=r"sampling\.predictor"):
    sampling.get_sampling_fn(_config("pc", predictor="ancestral"), sde, mixture_score(sde), shape, identity,
                             eps=1e-5)


def test_pc_sampler_is_one_compiled_loop():
  """The sampler is a jitted function of (rng, params) whose program holds one while loop over the N steps
  (no unrolling: the lowered program has as many operations for N = 50 as for N = 1000; only the constant
  tables of the discrete chain grow)."""
  programs = []
  for n in (50, 1000):
    sde = SDES["vp"](n)
    sampler = pc_sampler.get_pc_sampler(sde, mixture_score(sde), (4,) + TAIL, "reverse_diffusion", "langevin",
                                        identity, snr=0.16)
    text = sampler.lower(jax.random.PRNGKey(0), {"w": jnp.ones(3)}).as_text()
    programs.append((text.count("stablehlo.while"), len(text.splitlines())))
  assert programs[0] == programs[1] and programs[0][0] >= 1, programs
