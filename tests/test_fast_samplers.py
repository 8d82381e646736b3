"""DDIM and Heun samplers, the sampler registry and data-parallel sampling, with closed-form scores.

Oracles: the data law of tests/test_sampling.py (Gaussians and two-mode mixtures per channel, exact scores);
a tight diffrax solution of the probability flow from the same latents (convergence orders); the updates
written out by hand in float64 numpy; and, on 8 simulated devices, the single-device samples.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_sde import fast_samplers, ode_sampler, pc_sampler, sampler_utils, sampling
from tests.test_sampling import B, K_SE, SDES, TAIL, assert_matches_data, identity, mixture_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------ the data law
# Allowances (see assert_matches_data) beyond K_SE Monte Carlo standard errors, from each method's bias,
# measured with these latents and cross-checked by the exact Gaussian-chain moments below:
# - Heun at K = 50 on the 'edm' or 'quadratic' grid: second order; its RMS error against the exact flow is
#   ~1e-3 here (test_convergence_orders), so only the stop at eps remains: allow 1% of the variance, as for the
#   ODE sampler.
# - DDIM at K = 100, 'quadratic' grid: first order; it shrinks the variance (its x0 prediction is a posterior
#   mean), by up to 5% (eta = 0) and 9% (eta = 1) on the narrow channels here, halving as K doubles. Allow 7%
#   and 11%; the mode weights stay within 0.01.
DATA_CASES = [
    # (sde, method, K, grid, eta, allowances)
    ("vp", "heun", 50, "edm", 0.0, dict(var_allow=0.01)),
    ("subvp", "heun", 50, "edm", 0.0, dict(var_allow=0.01)),
    ("ve", "heun", 50, "edm", 0.0, dict(var_allow=0.01)),
    ("vp", "heun", 50, "quadratic", 0.0, dict(var_allow=0.01)),
    ("vp", "ddim", 100, "quadratic", 0.0, dict(var_allow=0.07)),
    ("vp", "ddim", 100, "quadratic", 1.0, dict(var_allow=0.11)),
]


def _build(method, sde, shape, k, grid="uniform", eta=0.0, denoise=False, sharding=None):
  score = mixture_score(sde)
  eps = sde.default_sampling_eps
  if method == "ddim":
    return fast_samplers.get_ddim_sampler(sde, score, shape, identity, num_steps=k, eta=eta, time_grid_kind=grid,
                                          denoise=denoise, eps=eps, sharding=sharding)
  return fast_samplers.get_heun_sampler(sde, score, shape, identity, num_steps=k, time_grid_kind=grid,
                                        denoise=denoise, eps=eps, sharding=sharding)


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: f"{c[0]}-{c[1]}{c[2]}-{c[3]}-eta{c[4]}")
def test_fast_sampler_reproduces_data(case):
  name, method, k, grid, eta, allow = case
  sde = SDES[name]()
  x, nfe = _build(method, sde, (B,) + TAIL, k, grid, eta, denoise=True)(jax.random.PRNGKey(1), None)
  assert x.shape == (B,) + TAIL
  # Every score evaluation is counted, the final denoising step included.
  assert int(nfe) == (k if method == "ddim" else 2 * k - 1) + 1
  assert_matches_data(x, what=str(case), **allow)


# Gaussian data, one law per channel: the exact score is linear in x, so every sampler here is an affine map of
# its latent plus Gaussian noise, and its output's mean and variance follow an exact float64 recursion.
G_MU = np.array([0.5, -0.3, 2.0, 0.0])
G_SD = np.array([0.3, 0.2, 0.5, 1.0])


def _gauss_score64(sde, t, x):
  """Exact float64 score of p_t for data N(G_MU, G_SD^2) per channel (x broadcasts against the channels)."""
  m, s = _levels(sde, t)
  return -(x - m * G_MU) / (m * m * G_SD ** 2 + s * s)


def _chain_moments(sde, method, k, grid, eta, denoise):
  """(mean, var) per channel of the sampler's output for the prior N(0, 1): each step is x -> a x + b + c z,
  with a, b read off the float64 update at x = 0 and x = 1 (exact, the update being affine)."""
  ts = fast_samplers.time_grid(sde, k, sde.default_sampling_eps, grid)
  levels = [_levels(sde, t) for t in ts]
  steps = []
  for i in range(k):
    (m, s), (m2, s2) = levels[i], levels[i + 1]
    if method == "ddim":
      c = eta * s2 / s * np.sqrt(1 - (m / m2) ** 2)
      def update(x, t=ts[i], m=m, s=s, m2=m2, s2=s2, c=c):
        eps_hat = -s * _gauss_score64(sde, t, x)
        return m2 * (x - s * eps_hat) / m + np.sqrt(s2 ** 2 - c ** 2) * eps_hat
    else:
      c = 0.0
      def update(x, i=i, m=m, s=s, m2=m2, s2=s2):
        slope = lambda y, t, m, s: -s * _gauss_score64(sde, t, m * y)
        y, h = x / m, s2 / m2 - s / m
        d = slope(y, ts[i], m, s)
        y = y + h * d if i == k - 1 else y + 0.5 * h * (d + slope(y + h * d, ts[i + 1], m2, s2))
        return m2 * y
    steps.append((update, c))
  if denoise:  # DDIM's Tweedie step at eps
    m, s = levels[-1]
    steps.append((lambda x: (x + s * s * _gauss_score64(sde, ts[-1], x)) / m, 0.0))
  mean, var = np.zeros(4), np.ones(4)
  for update, c in steps:
    b = update(np.zeros(4))
    a = update(np.ones(4)) - b
    mean, var = a * mean + b, a * a * var + c * c
  return mean, var


@pytest.mark.parametrize("method,k,grid,eta", [
    ("ddim", 50, "uniform", 0.0), ("ddim", 100, "quadratic", 1.0), ("heun", 50, "quadratic", 0.0),
    ("heun", 100, "edm", 0.0)])
def test_gaussian_data_match_the_exact_chain_moments(method, k, grid, eta):
  """Gaussian channels N(G_MU, G_SD^2), VP SDE: the sample mean and variance equal the sampler's own exact
  moments (the affine recursion) within K_SE standard errors. Those approach the data law: DDIM at first order
  (its variance deficit, 4-22% here, halves within 20% when K doubles), Heun within 1% at these K (measured
  0.2-0.8%). The mean is off by up to 0.007 for every deterministic sampler: the prior N(0, 1) misses p_T's
  mean m(T) G_MU (m(T) = e^-5), an offset the flow carries to t = eps (eta = 1 forgets it)."""
  sde = SDES["vp"]()
  score = mixture_score(sde, w1=np.full(4, 0.5), mu=np.stack([G_MU] * 2, 1), sd=np.stack([G_SD] * 2, 1))
  denoise = method == "ddim"
  if method == "ddim":
    sampler = fast_samplers.get_ddim_sampler(sde, score, (B,) + TAIL, identity, num_steps=k, eta=eta,
                                             time_grid_kind=grid, denoise=denoise)
  else:
    sampler = fast_samplers.get_heun_sampler(sde, score, (B,) + TAIL, identity, num_steps=k, time_grid_kind=grid)
  x = np.asarray(sampler(jax.random.PRNGKey(6), None)[0], np.float64).reshape(B, 4)
  mean, var = _chain_moments(sde, method, k, grid, eta, denoise)
  se_m, se_v = np.sqrt(var / B), var * np.sqrt(2.0 / B)
  assert np.all(np.abs(x.mean(0) - mean) < K_SE * se_m), (x.mean(0), mean)
  assert np.all(np.abs(x.var(0) - var) < K_SE * se_v), (x.var(0), var)
  deficit = 1 - var / G_SD ** 2
  if method == "ddim":
    deficit_2k = 1 - _chain_moments(sde, method, 2 * k, grid, eta, denoise)[1] / G_SD ** 2
    assert np.all(deficit > 0) and np.all(np.abs(deficit / deficit_2k - 2) < 0.4), (deficit, deficit_2k)
  else:
    assert np.all(np.abs(deficit) < 0.01), deficit
  np.testing.assert_allclose(mean, G_MU, atol=0.01)


# ------------------------------------------------------------------------------------------------ convergence
@pytest.mark.parametrize("name,method,grid,lo,hi", [
    ("vp", "heun", "quadratic", 3.4, 4.6), ("subvp", "heun", "edm", 3.4, 4.6), ("ve", "heun", "uniform", 3.4, 4.6),
    ("vp", "ddim", "uniform", 1.7, 2.3), ("vp", "ddim", "edm", 1.7, 2.3)])
def test_convergence_orders(name, method, grid, lo, hi):
  """From the same latents, the per-channel RMS error against the exact flow map (diffrax Dopri5 at 1e-7)
  falls ~4x when K doubles from 50 to 100 for Heun (second order) and ~2x for DDIM (first order).
  Measured ratios: 3.6-4.1 (Heun), 1.8-2.0 (DDIM)."""
  shape = (1024,) + TAIL
  sde = SDES[name]()
  z = sde.prior_sampling(jax.random.PRNGKey(3), shape)
  exact = ode_sampler.get_ode_sampler(sde, mixture_score(sde), shape, identity, rtol=1e-7, atol=1e-7,
                                      eps=sde.default_sampling_eps)
  x_ref = np.asarray(exact(None, None, z)[0])
  rms = []
  for k in (50, 100):
    x, nfe = _build(method, sde, shape, k, grid)(jax.random.PRNGKey(0), None, z)
    assert int(nfe) == (k if method == "ddim" else 2 * k - 1)
    rms.append(np.sqrt(np.mean((np.asarray(x) - x_ref) ** 2, axis=0)).ravel())
  ratio = rms[0] / rms[1]
  assert np.all(rms[1] > 2e-5), rms  # well above the reference's own error, so the ratio means something
  assert np.all((ratio > lo) & (ratio < hi)), (rms, ratio)


# ------------------------------------------------------------------------------------------------ by hand
def _levels(sde, t):
  mean, std = sde.marginal_prob(jnp.ones((1,)), jnp.full((1,), t, jnp.float32))
  return float(mean[0]), float(std[0])


def test_updates_match_the_formulas_written_out():
  """Deterministic DDIM (DDIM eq. 12 in alpha_bar form) and Heun (trapezoid in sigma = s/m) with K = 3 on the
  'quadratic' grid, written out in float64 numpy with the same score, agree with the compiled samplers. DDIM
  with eta = 0 also equals Euler's method for dy/dsigma: the two samplers share the first stage."""
  sde = SDES["vp"]()
  score = mixture_score(sde)
  shape = (32,) + TAIL
  z = np.asarray(sde.prior_sampling(jax.random.PRNGKey(4), shape), np.float64)
  ts = fast_samplers.time_grid(sde, 3, 1e-3, "quadratic")
  np.testing.assert_allclose(ts, 1e-3 + (1 - 1e-3) * (1 - np.arange(4) / 3) ** 2, rtol=1e-15)
  s_np = lambda x, t: np.asarray(score(None, jnp.asarray(x, jnp.float32), jnp.full((32,), t, jnp.float32)),
                                 np.float64)

  x = z.copy()  # DDIM: x0_hat = (x - sqrt(1 - ab) eps) / sqrt(ab); x' = sqrt(ab') x0_hat + sqrt(1 - ab') eps
  for t, t_next in zip(ts[:-1], ts[1:]):
    (m, s), (m2, s2) = _levels(sde, t), _levels(sde, t_next)
    eps_hat = -s * s_np(x, t)
    x = m2 * (x - s * eps_hat) / m + s2 * eps_hat
  m_end, s_end = _levels(sde, ts[-1])
  ddim_hand = (x + s_end ** 2 * s_np(x, ts[-1])) / m_end  # with the Tweedie denoising step

  def slope(y, t):
    m, s = _levels(sde, t)
    return -(s / m) * m * s_np(m * y, t)

  sig = [s / m for m, s in map(lambda t: _levels(sde, t), ts)]
  y = z / _levels(sde, ts[0])[0]
  euler = y.copy()
  for i in range(3):
    h = sig[i + 1] - sig[i]
    d = slope(y, ts[i])
    euler = euler + h * slope(euler, ts[i])
    y = y + h * d if i == 2 else y + 0.5 * h * (d + slope(y + h * d, ts[i + 1]))
  heun_hand, euler_hand = m_end * y, m_end * euler

  ddim = fast_samplers.get_ddim_sampler(sde, score, shape, identity, num_steps=3, time_grid_kind="quadratic")
  ddim_raw = fast_samplers.get_ddim_sampler(sde, score, shape, identity, num_steps=3, time_grid_kind="quadratic",
                                            denoise=False)
  heun = fast_samplers.get_heun_sampler(sde, score, shape, identity, num_steps=3, time_grid_kind="quadratic")
  x_ddim, n_ddim = ddim(jax.random.PRNGKey(0), None, z)
  x_raw, n_raw = ddim_raw(jax.random.PRNGKey(0), None, z)
  x_heun, n_heun = heun(jax.random.PRNGKey(0), None, z)
  assert (int(n_ddim), int(n_raw), int(n_heun)) == (4, 3, 5)
  np.testing.assert_allclose(np.asarray(x_ddim), ddim_hand, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(x_raw), euler_hand, rtol=1e-4, atol=1e-5)
  # Heun's y = x / m starts at |y| ~ 1 / m(T) ~ 150: float32 rounding there is ~1e-5 absolute at the end.
  np.testing.assert_allclose(np.asarray(x_heun), heun_hand, rtol=1e-4, atol=1e-4)


def test_time_grids():
  """Endpoints, monotonicity, and the 'edm' grid against its closed form for VE, where sigma(t) = s(t) is
  sigma_min (sigma_max / sigma_min)^t: uniform steps in sigma^(1/7) (Karras et al. 2022, eq. 5)."""
  ve = SDES["ve"]()
  k, rho = 10, 7.0
  grid = fast_samplers.time_grid(ve, k, 1e-5, "edm")
  lo, hi = ve.sigma(1e-5) ** (1 / rho), ve.sigma_max ** (1 / rho)
  sig = (hi + np.arange(k + 1) / k * (lo - hi)) ** rho
  t_closed = np.log(sig / ve.sigma_min) / np.log(ve.sigma_max / ve.sigma_min)
  np.testing.assert_allclose(grid, t_closed, atol=2e-5)
  for name in SDES:
    for kind in ("uniform", "quadratic", "edm"):
      g = fast_samplers.time_grid(SDES[name](), 7, 1e-3, kind)
      assert g.shape == (8,) and g[0] == 1.0 and g[-1] == 1e-3 and np.all(np.diff(g) < 0), (name, kind, g)
  np.testing.assert_allclose(fast_samplers.time_grid(ve, 4, 0.2), [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-12)


def test_one_step_heun_and_ddim_eta():
  """K = 1 Heun is a single Euler step (NFE 1, finite). DDIM with eta > 0 adds fresh noise: from the same
  rng its samples differ from eta = 0 (the noise's size is checked by the exact chain moments above)."""
  sde = SDES["vp"]()
  shape = (16,) + TAIL
  x, nfe = _build("heun", sde, shape, 1)(jax.random.PRNGKey(0), None)
  assert int(nfe) == 1 and np.all(np.isfinite(np.asarray(x)))
  x0, _ = _build("ddim", sde, shape, 5, eta=0.0)(jax.random.PRNGKey(0), None)
  x1, _ = _build("ddim", sde, shape, 5, eta=1.0)(jax.random.PRNGKey(0), None)
  assert float(jnp.max(jnp.abs(x1 - x0))) > 1e-2


# ------------------------------------------------------------------------------------------------ errors
def test_bad_input_is_refused_clearly():
  vp, ve, sub = SDES["vp"](), SDES["ve"](), SDES["subvp"]()
  shape = (4,) + TAIL
  for other in (ve, sub):
    with pytest.raises(ValueError, match="heun"):
      fast_samplers.get_ddim_sampler(other, mixture_score(other), shape, identity)
  with pytest.raises(ValueError, match="time_grid.*uniform"):
    fast_samplers.get_heun_sampler(vp, mixture_score(vp), shape, identity, time_grid_kind="cosine")
  with pytest.raises(ValueError, match="num_steps"):
    fast_samplers.get_heun_sampler(vp, mixture_score(vp), shape, identity, num_steps=0)
  with pytest.raises(ValueError, match="ddim_eta"):
    fast_samplers.get_ddim_sampler(vp, mixture_score(vp), shape, identity, eta=-0.5)
  with pytest.raises(ValueError, match="ddim_eta"):
    fast_samplers.get_ddim_sampler(vp, mixture_score(vp), shape, identity, eta=3.0)
  with pytest.raises(ValueError, match="eps"):
    fast_samplers.time_grid(vp, 10, 1.0)
  heun = fast_samplers.get_heun_sampler(vp, mixture_score(vp), shape, identity, num_steps=2)
  with pytest.raises(ValueError, match="latent z has shape"):
    heun(jax.random.PRNGKey(0), None, jnp.zeros((5,) + TAIL))


# ------------------------------------------------------------------------------------------------ registry
def _config(method, **sampling_keys):
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({"continuous": True})
  config.sampling = ml_collections.ConfigDict({
      "method": method, "predictor": "euler_maruyama", "corrector": "none", "snr": 0.16, "n_steps_each": 1,
      "probability_flow": False, "noise_removal": False, **sampling_keys})
  return config


def test_get_sampling_fn_reads_the_new_keys_with_defaults():
  assert {"ddim", "heun", "ode", "pc"} <= set(sampling.registered_samplers())
  sde = SDES["vp"](50)
  shape = (8,) + TAIL
  build = lambda config: sampling.get_sampling_fn(config, sde, mixture_score(sde), shape, identity, eps=1e-3)
  z = sde.prior_sampling(jax.random.PRNGKey(1), shape)
  # Without the keys: 50 uniform steps, eta 0.
  x_default, nfe = build(_config("ddim"))(jax.random.PRNGKey(0), None, z)
  assert int(nfe) == 50
  x_explicit, _ = build(_config("ddim", num_steps=50, time_grid="uniform", ddim_eta=0.0))(jax.random.PRNGKey(0),
                                                                                         None, z)
  np.testing.assert_array_equal(np.asarray(x_default), np.asarray(x_explicit))
  _, nfe = build(_config("heun", num_steps=7, time_grid="edm", noise_removal=True))(jax.random.PRNGKey(0), None)
  assert int(nfe) == 2 * 7 - 1 + 1
  _, nfe = build(_config("DDIM", num_steps=9, ddim_eta=0.5))(jax.random.PRNGKey(0), None)
  assert int(nfe) == 9
  with pytest.raises(ValueError, match=r"sampling\.method='euler'.*\['ddim', 'heun', 'ode', 'pc'"):
    build(_config("euler"))
  with pytest.raises(ValueError, match="already registered"):
    sampling.register_sampler("ddim")(lambda *a, **k: None)


def test_default_configs_carry_the_new_keys():
  from configs import default_cifar10_configs, default_digits_configs  # pylint: disable=g-import-not-at-top
  for module in (default_cifar10_configs, default_digits_configs):
    s = module.get_default_configs().sampling
    assert (s.num_steps, s.time_grid, s.ddim_eta) == (50, "uniform", 0.0)


@sampling.register_sampler("test_prior_only")
def _prior_only(config, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """A user-defined sampler: one decorated builder. Returns the prior draw, zero evaluations."""
  del config, score_fn, eps
  return jax.jit(lambda rng, params, z=None: (
      inverse_scaler(sampler_utils.initial_state(sde, rng, shape, z, sharding)), jnp.asarray(0, jnp.int32)))


def test_new_sampler_is_one_decorated_function():
  sde = SDES["ve"](10)
  sampler = sampling.get_sampling_fn(_config("test_prior_only"), sde, None, (4,) + TAIL, identity, eps=1e-5)
  x, nfe = sampler(jax.random.PRNGKey(2), None)
  np.testing.assert_allclose(np.asarray(x), np.asarray(sde.prior_sampling(jax.random.PRNGKey(2), (4,) + TAIL)),
                             rtol=1e-6)
  assert int(nfe) == 0


def test_fast_samplers_are_one_compiled_loop():
  """One while loop whatever K: the lowered program for K = 100 is as long as for K = 10."""
  sde = SDES["vp"]()
  for method in ("ddim", "heun"):
    programs = []
    for k in (10, 100):
      text = _build(method, sde, (4,) + TAIL, k, eta=0.5).lower(jax.random.PRNGKey(0), None).as_text()
      programs.append((text.count("stablehlo.while"), len(text.splitlines())))
    assert programs[0] == programs[1] and programs[0][0] >= 1, (method, programs)


# ------------------------------------------------------------------------------------------------ sharding
_SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from score_sde import fast_samplers, ode_sampler, parallel, pc_sampler
from tests.test_sampling import SDES, TAIL, identity, mixture_score
assert jax.device_count() == 8
sharding = parallel.batch_sharding(parallel.make_mesh())
shape = (64,) + TAIL
sde = SDES["vp"](100)
score = mixture_score(sde)
builders = {
    "pc": lambda s: pc_sampler.get_pc_sampler(sde, score, shape, "reverse_diffusion", "langevin", identity, snr=0.16,
                                              n_steps=2, sharding=s),
    "ode": lambda s: ode_sampler.get_ode_sampler(sde, score, shape, identity, sharding=s),
    "ddim": lambda s: fast_samplers.get_ddim_sampler(sde, score, shape, identity, num_steps=10, eta=1.0, sharding=s),
    "heun": lambda s: fast_samplers.get_heun_sampler(sde, score, shape, identity, num_steps=10, sharding=s),
}
for name, build in builders.items():
  x1, n1 = build(None)(jax.random.PRNGKey(0), None)
  x8, n8 = build(sharding)(jax.random.PRNGKey(0), None)
  assert len(x1.sharding.device_set) == 1, name
  assert x8.sharding.is_equivalent_to(sharding, x8.ndim) and len(x8.sharding.device_set) == 8, (name, x8.sharding)
  assert int(n1) == int(n8), name
  np.testing.assert_allclose(np.asarray(x8), np.asarray(x1), rtol=0, atol=1e-5, err_msg=name)
# Per-shard norm averages (8 examples each) differ by several percent from the global one: a Langevin step
# size computed per shard would move the samples far beyond the tolerance above.
noise = np.asarray(jax.random.normal(jax.random.PRNGKey(5), shape)).reshape(8, 8, -1)
per_shard = np.linalg.norm(noise, axis=-1).mean(1)
assert np.ptp(per_shard) / per_shard.mean() > 0.05, per_shard
print("ok")
"""


def test_samplers_on_eight_devices_match_one_device():
  """PC (reverse diffusion + Langevin, whose step size averages norms over the batch), the ODE sampler (whose
  error norm spans the batch), DDIM (eta = 1) and Heun, with the batch and the prior draw sharded over 8
  simulated CPU devices, give the single-device samples to 1e-5 (float32 reductions in another order;
  measured <= 8e-7) and the same NFE."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
