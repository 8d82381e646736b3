"""Oracles for the DDPM variational bound (`score_sde.vlb`) with closed-form scores (no network).

Two data laws have exact scores at every step of the chain (abar(t_i) = abar_i by construction):
  * Gaussian data N(mu_k, s_k^2) per coordinate: q(x_i) = N(sqrt(abar_i) mu, abar_i s^2 + 1 - abar_i). The
    exact score makes the model mean the posterior mean E[x_{i-1} | x_i] (Tweedie), so mu~ - mu =
    coef_x0 (x_0 - E[x_0 | x_i]) and E[L_{i-1}] = 1/2 sum_k [log(sigma^2 / beta~) + beta~ / sigma^2 - 1 +
    coef_x0^2 Var(x_0 | x_i) / sigma^2] with Var(x_0 | x_i) = s^2 (1 - abar_i) / (abar_i s^2 + 1 - abar_i).
  * A point mass at a grid image x*: then E[x_0 | x_i] = x* exactly, every KL is the variance mismatch
    alone (0 for 'fixedsmall') and the decoder is N(x*, sigma_1^2) over x*'s bin: all closed forms.

Shapes are (B, 1, 1, 4): XLA:CPU is slow on arrays whose minor dimension is 1.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from score_sde import sde_lib, vlb
from score_sde.models import utils as mutils
from tests import score_oracles

TAIL = (1, 1, 4)
D = 4
K_SE = 4.0  # Monte Carlo standard errors allowed
LN2 = np.log(2.0)


def to_batch(x):
  return jnp.asarray(np.asarray(x).reshape((-1,) + TAIL), jnp.float32)




def prior_bits(consts, x):
  """L_N in bits/dim per example, float64: KL(N(sqrt(abar_N) x, 1 - abar_N) || N(0, 1))."""
  a, v = consts["abar"][-1], consts["one_m_abar"][-1]
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  return 0.5 * (a * x ** 2 + v - 1.0 - np.log(v)).sum(1) / (x.shape[1] * LN2)


def variance_mismatch_bits(consts):
  """sum_{i=2..N} 1/2 (log(sigma_i^2 / beta~_i) + beta~_i / sigma_i^2 - 1) per pixel, in bits."""
  ratio = consts["post_var"][1:] / consts["model_var"][1:]
  return 0.5 * (-np.log(ratio) + ratio - 1.0).sum() / LN2


# ------------------------------------------------------------------------------------------------ Gaussian data
MU = np.array([0.3, -0.5, 0.1, 0.7])
SD = np.array([0.2, 0.5, 1.0, 0.05])


@pytest.mark.parametrize("model_var", ["fixedlarge", "fixedsmall"])
def test_gaussian_rate_matches_its_closed_form(model_var):
  """Monte Carlo average over 4096 data draws (each with its own x_i draws) of the KL terms equals the
  closed-form expectation within K_SE standard errors; the prior term equals its closed form per example."""
  n, num_steps = 4096, 50
  sde = sde_lib.VPSDE(0.1, 20.0, num_steps)
  consts = vlb.chain_constants(sde, model_var)
  x = MU + SD * np.random.RandomState(0).randn(n, D)
  # The closed form is the unclipped bound: this data (SD = 1) and its x_0 predictions leave [-1, 1].
  out = vlb.get_vlb_fn(sde, score_oracles.gaussian_score(sde, MU.reshape(TAIL), SD.reshape(TAIL)), model_var=model_var,
                       clip_denoised=False)(jax.random.PRNGKey(1), None, to_batch(x))
  np.testing.assert_allclose(np.asarray(out["prior"]), prior_bits(consts, x), rtol=1e-5, atol=1e-9)
  abar = consts["abar"][1:, None]
  post_var_x0 = SD ** 2 * (1.0 - abar) / (abar * SD ** 2 + 1.0 - abar)
  sigma2, beta_tilde = consts["model_var"][1:, None], consts["post_var"][1:, None]
  kl = 0.5 * (np.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1.0
              + consts["coef_x0"][1:, None] ** 2 * post_var_x0 / sigma2)
  expected = kl.sum() / (D * LN2)
  terms = np.asarray(out["rate"], np.float64) - np.asarray(out["prior"], np.float64)
  se = terms.std() / np.sqrt(n)
  assert abs(terms.mean() - expected) < K_SE * se, (terms.mean(), expected, se)
  np.testing.assert_allclose(np.asarray(out["bpd"]), np.asarray(out["rate"] + out["distortion"]), rtol=1e-6)


def test_prior_term_is_about_ten_micro_bits_for_the_ddpm_chain():
  """The DDPM paper's figure: L_T ~ 1e-5 bits/dim for [-1, 1] data at beta 1e-4..0.02, N = 1000."""
  sde = sde_lib.VPSDE(0.1, 20.0, 1000)
  x = 2.0 * np.random.RandomState(0).randint(0, 256, (64, D)) / 255.0 - 1.0
  out = vlb.get_vlb_fn(sde, score_oracles.gaussian_score(sde, 0.0, 0.5))(jax.random.PRNGKey(0), None, to_batch(x))
  prior = np.asarray(out["prior"])
  np.testing.assert_allclose(prior, prior_bits(vlb.chain_constants(sde), x), rtol=1e-5, atol=1e-12)
  assert 5e-6 < prior.mean() < 2e-5, prior.mean()


# ------------------------------------------------------------------------------------------------ decoder
def reference_log_mass(x, mean, std, half, low, high):
  """log P(bin of x) under N(mean, std^2): scipy quadrature of the density over a finite bin, the float64
  normal log-cdf / log-survival function over an edge bin (extended to -+inf)."""
  if x < low + half:
    return stats.norm.logcdf(x + half, mean, std)
  if x > high - half:
    return stats.norm.logsf(x - half, mean, std)
  lo, hi = (x - half - mean) / std, (x + half - mean) / std
  # The standardised density, scaled so that far-tail integrands stay well inside float64's range.
  peak = min(abs(lo), abs(hi)) if lo * hi > 0 else 0.0
  value, _ = integrate.quad(lambda u: np.exp(-0.5 * (u * u - peak * peak)), lo, hi, epsabs=0, epsrel=1e-12)
  return np.log(value) - 0.5 * peak * peak - 0.5 * np.log(2 * np.pi)


def test_discretized_gaussian_matches_quadrature_in_both_tails():
  half = 1.0 / 255.0
  grid = np.float32([-1.0, -1.0 + 2 * half, 2 * 153 / 255 - 1, 1.0 - 2 * half, 1.0]).astype(np.float64)
  for std in (0.004, 0.05, 1.0):
    for z in (-40.0, -8.0, -1.0, 0.0, 0.3, 2.0, 9.0, 40.0):
      mean = grid - z * std
      got = np.asarray(vlb.discretized_gaussian_log_likelihood(jnp.float32(grid), jnp.float32(mean),
                                                               jnp.float32(std)), np.float64)
      want = np.array([reference_log_mass(g, m, std, half, -1.0, 1.0)
                       for g, m in zip(grid, np.float32(mean).astype(np.float64))])
      assert np.all(np.isfinite(got)), (std, z, got)
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5, err_msg=f"std={std} z={z}")


@pytest.mark.parametrize("centered", [True, False])
def test_decoder_term_is_the_gaussian_mass_of_the_bin(centered):
  """A score with (x + beta_1 s) / sqrt(alpha_1) = C for every x_1 fixes the unclipped decoder mean at C, so
  `distortion` must be -log2 of the N(C, sigma_1^2) mass of each pixel's bin, summed over pixels, / D."""
  sde = sde_lib.VPSDE(0.1, 20.0, 50)
  consts = vlb.chain_constants(sde)
  low, high = (-1.0, 1.0) if centered else (0.0, 1.0)
  half = 0.5 * (high - low) / 255
  grid = lambda k: low + np.asarray(k) * (high - low) / 255
  x0 = np.stack([grid([0, 3, 153, 255]), grid([255, 128, 7, 0])])
  sigma = np.sqrt(consts["model_var"][0])
  target = np.float32(x0 + sigma * np.array([[0.3, -2.0, 5.0, -8.0], [-3.0, 0.0, 1.5, 8.0]]))
  beta, sqrt_alpha = np.float32(consts["betas"][0]), np.float32(np.sqrt(consts["alphas"][0]))
  score = lambda params, x, t, rng=None: (sqrt_alpha * to_batch(target) - x) / beta
  # C leaves the data range for some pixels: the unclipped decoder (test_clipped_x0_prediction for the clip).
  out = vlb.get_vlb_fn(sde, score, data_centered=centered, clip_denoised=False)(jax.random.PRNGKey(0), None,
                                                                                to_batch(x0))
  want = [-sum(reference_log_mass(x, m, sigma, half, low, high) for x, m in zip(xs, ms)) / (D * LN2)
          for xs, ms in zip(x0, target.astype(np.float64))]
  np.testing.assert_allclose(np.asarray(out["distortion"]), want, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ point mass
def point_mass_expectations(sde, x_star, model_var, centered):
  """(rate, distortion) in bits/dim per example for the exact score of a point mass at x_star (B, D)."""
  consts = vlb.chain_constants(sde, model_var)
  low, high = (-1.0, 1.0) if centered else (0.0, 1.0)
  half = 0.5 * (high - low) / 255
  rate = prior_bits(consts, x_star) + variance_mismatch_bits(consts)
  sigma = np.sqrt(consts["model_var"][0])
  log_p = [[reference_log_mass(x, x, sigma, half, low, high) for x in xs] for xs in x_star]
  return rate, -np.sum(log_p, axis=1) / (D * LN2)


CASES = [(True, "fixedlarge"), (True, "fixedsmall"), (False, "fixedsmall")]


def point_mass_score(sde):
  """The exact score of a point mass at params (broadcast against x): (sqrt(abar) params - x) / (1 - abar)."""
  return lambda params, x, t, rng=None: score_oracles.gaussian_score(sde, params, 0.0)(None, x, t)


@pytest.mark.parametrize("centered,model_var", CASES)
def test_point_mass_on_the_grid(centered, model_var):
  """A near-perfect model of grid data: every output matches its closed form; with sigma_1 = 4.5e-4 far
  below the half bin width the distortion is ~1e-5 bits/dim. A shifted (wrong) point mass still gives
  finite, non-negative terms that add up, and a much larger bound."""
  sde = sde_lib.VPSDE(1e-5, 20.0, 50)  # beta_1 = 2e-7: a sharp decoder
  low, high = (-1.0, 1.0) if centered else (0.0, 1.0)
  k = np.array([[0, 37, 200, 255], [255, 128, 1, 0], [64, 64, 254, 17]])
  x_star = low + k * (high - low) / 255
  fn = vlb.get_vlb_fn(sde, point_mass_score(sde), data_centered=centered, model_var=model_var)
  out = fn(jax.random.PRNGKey(0), to_batch(x_star), to_batch(x_star))
  rate, distortion = point_mass_expectations(sde, x_star, model_var, centered)
  np.testing.assert_allclose(np.asarray(out["rate"]), rate, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["distortion"]), distortion, rtol=0, atol=1e-6)
  assert np.all(np.asarray(out["distortion"]) < 1e-3)
  if model_var == "fixedsmall":  # the KL terms vanish: only the prior remains
    np.testing.assert_allclose(np.asarray(out["rate"]), np.asarray(out["prior"]), rtol=0, atol=1e-5)
  wrong = fn(jax.random.PRNGKey(0), to_batch(x_star) + 0.1, to_batch(x_star))
  for key, value in wrong.items():
    value = np.asarray(value)
    assert np.all(np.isfinite(value) & (value >= 0)), (key, value)
  np.testing.assert_allclose(np.asarray(wrong["bpd"]), np.asarray(wrong["rate"] + wrong["distortion"]),
                             rtol=1e-6)
  assert np.all(np.asarray(wrong["bpd"]) > np.asarray(out["bpd"]) + 1.0)


# ------------------------------------------------------------------------------------------------ clipping
def fixed_prediction_bits(sde, x0, pred, model_var, centered, clip):
  """(rate, distortion) in bits/dim per example, float64 numpy, for a model whose x_0 prediction is `pred`
  (B, D) at every step and every x_i, following the DDPM code's p_mean_variance: mu = coef_x0 x0_hat +
  coef_xt x_i with x0_hat = clip(pred) when `clip`. mu~ - mu = coef_x0 (x_0 - x0_hat) does not depend on x_i,
  so every term is deterministic."""
  c = vlb.chain_constants(sde, model_var)
  low, high = (-1.0, 1.0) if centered else (0.0, 1.0)
  half = 0.5 * (high - low) / 255
  x0_hat = np.clip(pred, low, high) if clip else np.asarray(pred, np.float64)
  sigma2, beta_tilde = c["model_var"][1:, None, None], c["post_var"][1:, None, None]
  gap2 = (c["coef_x0"][1:, None, None] * (x0 - x0_hat)[None]) ** 2
  kl = 0.5 * (np.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1.0 + gap2 / sigma2)  # (N - 1, B, D)
  rate = prior_bits(c, x0) + kl.sum(axis=(0, 2)) / (D * LN2)
  # Step 1: coef_x0 = 1 and coef_xt = 0, so the decoder mean is x0_hat itself.
  assert abs(c["coef_x0"][0] - 1.0) < 1e-12 and c["coef_xt"][0] == 0.0
  sigma = np.sqrt(c["model_var"][0])
  log_p = [[reference_log_mass(x, m, sigma, half, low, high) for x, m in zip(xs, ms)] for xs, ms in zip(x0, x0_hat)]
  return rate, -np.sum(log_p, axis=1) / (D * LN2)


@pytest.mark.parametrize("centered,model_var", CASES)
def test_clipped_x0_prediction(centered, model_var):
  """A network predicting the same x_0 = P at every step (the point-mass score at P), with P partly outside
  the data range: the default bound clips P to [-1, 1] ([0, 1] for uncentred data) in every KL term and in
  the decoder and equals the clipped closed form; clip_denoised=False equals the unclipped one. Pixels of P
  inside the range (and exactly on its ends) are unaffected."""
  sde = sde_lib.VPSDE(0.1, 20.0, 50)
  low, high = (-1.0, 1.0) if centered else (0.0, 1.0)
  grid = lambda k: low + np.asarray(k, np.float64) * (high - low) / 255
  x0 = np.stack([grid([0, 3, 153, 255]), grid([255, 128, 7, 0]), grid([250, 10, 255, 0])])
  width = high - low
  pred = np.stack([[low - 0.3 * width, grid(5), high + 0.2 * width, high + 0.6 * width],
                   [high + 0.05 * width, grid(120), low - 0.01 * width, low],
                   [grid(250), high, high + 1.0 * width, low - 2.0 * width]])
  pred = np.float32(pred).astype(np.float64)
  outs = {}
  for clip in (True, False):
    kwargs = {} if clip else {"clip_denoised": False}
    fn = vlb.get_vlb_fn(sde, point_mass_score(sde), data_centered=centered, model_var=model_var, **kwargs)
    out = fn(jax.random.PRNGKey(3), to_batch(pred), to_batch(x0))
    rate, distortion = fixed_prediction_bits(sde, x0, pred, model_var, centered, clip)
    np.testing.assert_allclose(np.asarray(out["rate"]), rate, rtol=1e-4, err_msg=f"clip={clip}")
    np.testing.assert_allclose(np.asarray(out["distortion"]), distortion, rtol=1e-4, err_msg=f"clip={clip}")
    np.testing.assert_allclose(np.asarray(out["bpd"]), np.asarray(out["rate"] + out["distortion"]), rtol=1e-6)
    outs[clip] = out
  # The clip moves every out-of-range prediction onto the range: the two bounds differ.
  assert np.all(np.abs(np.asarray(outs[True]["rate"]) - np.asarray(outs[False]["rate"])) > 1e-3)
  np.testing.assert_array_equal(np.asarray(outs[True]["prior"]), np.asarray(outs[False]["prior"]))


def test_clip_is_a_no_op_for_in_range_predictions():
  """With the exact score of grid data the x_0 prediction is in range: clipped and unclipped bounds agree."""
  sde = sde_lib.VPSDE(1e-5, 20.0, 50)
  x_star = 2.0 * np.array([[0, 37, 200, 254], [1, 128, 60, 17]]) / 255 - 1.0
  fns = [vlb.get_vlb_fn(sde, point_mass_score(sde), model_var="fixedsmall", clip_denoised=c) for c in (True, False)]
  a, b = (fn(jax.random.PRNGKey(0), to_batch(x_star), to_batch(x_star)) for fn in fns)
  for key in a:
    np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=0, atol=1e-5, err_msg=key)


# ------------------------------------------------------------------------------------------------ networks
class PointMassEps(nn.Module):
  """A 'network' predicting the exact noise of a point mass at its parameter `center`, reading time labels
  as `get_score_fn` feeds them: 999 t when continuous, else the chain index t (N - 1) (truncated)."""

  sde: sde_lib.VPSDE
  continuous: bool

  @nn.compact
  def __call__(self, x, labels, train=False):
    center = self.param("center", nn.initializers.zeros, x.shape)
    if self.continuous:
      m, std = self.sde.marginal_prob(jnp.ones_like(labels), labels / 999.0)
    else:
      index = labels.astype(jnp.int32)
      m = jnp.asarray(self.sde.sqrt_alphas_cumprod)[index]
      std = jnp.asarray(self.sde.sqrt_1m_alphas_cumprod)[index]
    m, std = m.reshape((-1, 1, 1, 1)), std.reshape((-1, 1, 1, 1))
    return (x - m * center) / std


@pytest.mark.parametrize("continuous", [True, False])
def test_time_labels_reach_the_network_at_the_chain_steps(continuous):
  """Through `get_score_fn`, a network predicting the exact noise at the step it is told gives the
  closed-form point-mass bound only if every step's time label names that step. At N = 100, t = i / (N - 1)
  truncates t (N - 1) to the step below for 8 steps, so the discrete labels must avoid that."""
  num_steps = 100
  sde = sde_lib.VPSDE(1e-5, 20.0, num_steps)
  naive = (np.arange(num_steps) / (num_steps - 1)).astype(np.float32)
  assert np.any(np.floor(naive * np.float32(num_steps - 1)) < np.arange(num_steps))
  x_star = 2.0 * np.array([[0, 37, 200, 255], [255, 128, 1, 0]]) / 255 - 1.0
  score = mutils.get_score_fn(sde, PointMassEps(sde, continuous), train=False, continuous=continuous)
  fn = vlb.get_vlb_fn(sde, score, model_var="fixedsmall", continuous=continuous)
  out = fn(jax.random.PRNGKey(0), {"center": to_batch(x_star)}, to_batch(x_star))
  rate, distortion = point_mass_expectations(sde, x_star, "fixedsmall", True)
  np.testing.assert_allclose(np.asarray(out["rate"]), rate, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["distortion"]), distortion, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ errors
def test_bad_arguments_are_rejected():
  score = lambda params, x, t, rng=None: -x
  for sde in (sde_lib.VESDE(), sde_lib.subVPSDE()):
    with pytest.raises(ValueError, match="discrete chain"):
      vlb.get_vlb_fn(sde, score)
  with pytest.raises(ValueError, match="model_var"):
    vlb.get_vlb_fn(sde_lib.VPSDE(), score, model_var="learned")
  with pytest.raises(ValueError, match="at least 2 steps"):
    vlb.get_vlb_fn(sde_lib.VPSDE(0.1, 0.5, 1), score)
  with pytest.raises(ValueError, match="float batch"):
    vlb.get_vlb_fn(sde_lib.VPSDE(0.1, 20.0, 50), score)(jax.random.PRNGKey(0), None,
                                                        jnp.zeros((2,) + TAIL, jnp.uint8))
