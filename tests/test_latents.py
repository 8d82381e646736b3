"""Latent-space tools (`score_sde.latents`) against closed forms, with Gaussian data N(mu_k, s_k^2) per coordinate.

Probability flow. Under VP, sub-VP and VE the marginals are p_t = N(m(t) mu, v(t)), v = m^2 s^2 + std^2
(m, std from `sde.marginal_prob`). The flow's velocity f - g^2 s / 2 is affine in x, so its map from t0 to t1
is affine per coordinate; it is increasing (1-D trajectories cannot cross) and pushes p_t0 onto p_t1, and the
only such map keeps the standardised coordinate: x(t1) = m(t1) mu + sqrt(v(t1) / v(t0)) (x(t0) - m(t0) mu).
As eps -> 0 the encoder is z = m(T) mu + (x - mu) sqrt(v(T)) / s (Song et al. 2021, §4.3).

DDPM chain. q(x_t) = N(sqrt(abar_t) mu, abar_t s^2 + 1 - abar_t) exactly, so with that exact score
(`chain_score`) eq. 15 of Ho et al. 2020 is Tweedie's formula, the posterior mean
E[x_0 | x_t] = mu + s^2 sqrt(abar_t) (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 - abar_t).

Shapes are (B, 1, 1, 4): XLA:CPU is slow on arrays whose minor dimension is 1.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import latents, pc_sampler, sde_lib, vlb
from tests import score_oracles

TAIL = (1, 1, 4)
D = 4
MU = np.array([0.3, -0.5, 0.1, 0.7])
SD = np.array([0.2, 0.5, 1.0, 0.1])
EPS = 1e-3
SDES = {
    "vp": lambda: sde_lib.VPSDE(0.1, 20.0, 1000),
    "subvp": lambda: sde_lib.subVPSDE(0.1, 20.0, 1000),
    "ve": lambda: sde_lib.VESDE(0.01, 50.0, 1000),
}


def to_batch(x):
  return jnp.asarray(np.reshape(x, (-1,) + TAIL), jnp.float32)


def flat(x):
  return np.asarray(x, np.float64).reshape(-1, D)


def flow_map(sde, x, t0, t1):
  """The closed-form probability-flow map from t0 to t1 (module docstring), float64, x (B, D)."""
  def coefficients(t):
    m, std = sde.marginal_prob(jnp.ones((1,)), jnp.full((1,), t))
    m, std = float(np.ravel(m)[0]), float(np.ravel(std)[0])
    return m, (m * SD) ** 2 + std ** 2
  (m0, v0), (m1, v1) = coefficients(t0), coefficients(t1)
  return m1 * MU + np.sqrt(v1 / v0) * (x - m0 * MU)


_FLOW_MAPS = {}


def encoder_decoder(name):
  """(sde, encode, decode) for a Gaussian-score oracle, built once per SDE."""
  if name not in _FLOW_MAPS:
    sde = SDES[name]()
    score = score_oracles.gaussian_score(sde, MU.reshape(TAIL), SD.reshape(TAIL))
    _FLOW_MAPS[name] = (sde, latents.get_encoder(sde, score, eps=EPS), latents.get_decoder(sde, score, eps=EPS))
  return _FLOW_MAPS[name]


# ------------------------------------------------------------------------------------------------ flow
@pytest.mark.parametrize("name", sorted(SDES))
def test_encoder_is_the_closed_form_flow_map(name):
  """At the solver's rtol = atol = 1e-5: z within 1e-3 relative (+ 1e-4 of the prior's std) of the affine map
  (measured worst: sub-VP 5.9e-4 relative, on the s = 0.1 coordinate the map stretches tenfold), and the
  decoder maps the exact latents back within 2e-4 (measured 7.5e-5)."""
  sde, encode, decode = encoder_decoder(name)
  x = MU + SD * np.random.RandomState(0).randn(16, D)
  z = flat(encode(None, to_batch(x)))
  z_exact = flow_map(sde, x, EPS, sde.T)
  scale = float(np.std(np.asarray(sde.prior_sampling(jax.random.PRNGKey(0), (1024,)))))
  np.testing.assert_allclose(z, z_exact, rtol=1e-3, atol=1e-4 * scale)
  np.testing.assert_allclose(flat(decode(None, to_batch(z_exact))), flow_map(sde, z_exact, sde.T, EPS),
                             rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", sorted(SDES))
def test_decode_and_encode_invert_each_other(name):
  """decode(encode(x)) within 2e-4 of x (measured <= 6.1e-5), encode(decode(z)) within 1e-3 of the prior's
  std of z (measured <= 4.7e-4 of it, sub-VP)."""
  sde, encode, decode = encoder_decoder(name)
  x = to_batch(MU + SD * np.random.RandomState(1).randn(16, D))
  np.testing.assert_allclose(flat(decode(None, encode(None, x))), flat(x), rtol=0, atol=2e-4)
  z = sde.prior_sampling(jax.random.PRNGKey(2), (16,) + TAIL)
  scale = float(np.std(np.asarray(z)))
  np.testing.assert_allclose(flat(encode(None, decode(None, z))), flat(z), rtol=0, atol=1e-3 * scale)


# ------------------------------------------------------------------------------------------------ latents
def test_interpolation_endpoints_are_the_inputs():
  rs = np.random.RandomState(3)
  z0, z1 = to_batch(rs.randn(5, D)), to_batch(rs.randn(5, D))
  for fn in (latents.slerp, latents.lerp):
    out = np.asarray(fn(z0, z1, [0.0, 0.25, 0.5, 1.0]))
    assert out.shape == (4, 5) + TAIL
    np.testing.assert_array_equal(out[0], np.asarray(z0))
    np.testing.assert_array_equal(out[-1], np.asarray(z1))
  np.testing.assert_allclose(np.asarray(latents.lerp(z0, z1, [0.25]))[0], 0.75 * z0 + 0.25 * z1, atol=1e-6)


def test_slerp_keeps_the_norm_of_orthogonal_equal_norm_inputs():
  """Per example, z1 is a random vector made orthogonal to z0 and rescaled to |z0|: slerp stays on that sphere
  (lerp's midpoint is 1/sqrt(2) inside it), and its midpoint is (z0 + z1) / sqrt(2)."""
  rs = np.random.RandomState(4)
  a, b = rs.randn(6, D), rs.randn(6, D)
  b -= (np.sum(a * b, 1) / np.sum(a * a, 1))[:, None] * a
  b *= (np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))[:, None]
  alphas = np.linspace(0.0, 1.0, 9)
  out = flat(latents.slerp(to_batch(a), to_batch(b), alphas)).reshape(9, 6, D)
  np.testing.assert_allclose(np.linalg.norm(out, axis=2), np.tile(np.linalg.norm(a, axis=1), (9, 1)), rtol=1e-5)
  np.testing.assert_allclose(out[4], (a + b) / np.sqrt(2.0), rtol=0, atol=1e-5)
  mid = flat(latents.lerp(to_batch(a), to_batch(b), [0.5]))
  np.testing.assert_allclose(np.linalg.norm(mid, axis=1), np.linalg.norm(a, axis=1) / np.sqrt(2.0), rtol=1e-5)


def test_scale_temperature():
  z = to_batch(np.random.RandomState(5).randn(3, D))
  np.testing.assert_allclose(np.asarray(latents.scale_temperature(z, 0.5)), 0.5 * np.asarray(z), rtol=1e-7)
  per_example = np.asarray(latents.scale_temperature(z, [0.0, 1.0, 2.0]))
  np.testing.assert_allclose(per_example, np.asarray(z) * np.array([0.0, 1.0, 2.0])[:, None, None, None])


# ------------------------------------------------------------------------------------------------ DDPM chain
def chain_score(sde, mu=MU, sd=SD):
  """The exact score of q(x_t) on the DDPM chain for Gaussian data (module docstring), indexed as the
  ancestral predictor reads t."""
  abar = jnp.asarray(sde.alphas_cumprod)
  mu, sd = jnp.asarray(np.reshape(mu, TAIL), jnp.float32), jnp.asarray(np.reshape(sd, TAIL), jnp.float32)

  def score_fn(params, x, t, rng=None):
    del params, rng
    a = abar[(t * (sde.N - 1) / sde.T).astype(jnp.int32)].reshape((-1, 1, 1, 1))
    return -(x - jnp.sqrt(a) * mu) / (a * sd ** 2 + 1.0 - a)

  return score_fn


def posterior_mean(x_t, abar, mu=MU, sd=SD):
  return mu + sd ** 2 * np.sqrt(abar) * (x_t - np.sqrt(abar) * mu) / (abar * sd ** 2 + 1.0 - abar)


CHAIN = lambda: sde_lib.VPSDE(0.1, 20.0, 100)


def test_progressive_generation_ends_at_the_ancestral_sample_and_predicts_the_posterior_mean():
  """Same rng as the PC sampler (ancestral_sampling + none): the last state is its sample (measured: equal
  bits) and so is the last x0_hat (4.8e-7). Every recorded x0_hat is E[x_0 | x_t] within 2e-6 / sqrt(abar_t)
  (measured <= 3.9e-7 / sqrt(abar_t); abar_t runs from 2e-5 at T to 0.999)."""
  sde = CHAIN()
  score = chain_score(sde)
  shape = (64,) + TAIL
  rng = jax.random.PRNGKey(6)
  chain, x0_hat = latents.get_progressive_generation(sde, score, shape, num_records=5)(rng, None)
  sample, _ = pc_sampler.get_pc_sampler(sde, score, shape, "ancestral_sampling", "none", lambda v: v, snr=0.16,
                                        denoise=True)(rng, None)
  assert chain.shape == (6,) + shape and x0_hat.shape == (5,) + shape
  np.testing.assert_allclose(np.asarray(chain[-1]), np.asarray(sample), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(x0_hat[-1]), np.asarray(sample), rtol=0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(chain[0]), np.asarray(jax.random.normal(jax.random.split(rng)[1], shape)))
  steps = latents.record_steps(sde, 5)
  np.testing.assert_array_equal(steps, [0, 25, 50, 74, 99])
  abar = np.asarray(sde.alphas_cumprod, np.float64)[sde.N - 1 - steps]
  for k in range(5):  # eq. 15 divides by sqrt(abar): float32 rounding of x_t is amplified by 1 / sqrt(abar)
    np.testing.assert_allclose(flat(x0_hat[k]), posterior_mean(flat(chain[k]), abar[k]), rtol=0,
                               atol=2e-6 / np.sqrt(abar[k]))
  # The predictions sharpen: their spread grows from ~0 (at T) to the data's.
  spread = np.asarray(x0_hat).reshape(5, -1, D).std(1).mean(1)
  assert np.all(np.diff(spread) > 0) and spread[0] < 0.05 < spread[-1], spread


def test_ddpm_interpolation():
  """t = 0 returns the inputs exactly. For t > 0 one noise serves every weight (equal weights decode alike),
  and the end points decode to new draws near x_0 ~ q(x_0 | x_t): per coordinate the RMS of (decoded - input)
  is sqrt(2) times the posterior std sqrt(s^2 (1 - abar_t) / (abar_t s^2 + 1 - abar_t)) (measured 0.89-1.13 of
  it over three seeds; the chain's fixed-large variances add a little), and sqrt(2) s after all N steps,
  where the decode forgets its input (measured 0.92-1.15)."""
  sde = CHAIN()
  interpolate = latents.get_ddpm_interpolation(sde, chain_score(sde))
  rs = np.random.RandomState(7)
  x0, x1 = to_batch(MU + SD * rs.randn(64, D)), to_batch(MU + SD * rs.randn(64, D))
  rng, alphas = jax.random.PRNGKey(8), [0.0, 0.5, 0.5, 1.0]  # one K: one compilation for every t_steps
  out = np.asarray(interpolate(rng, None, x0, x1, 0, alphas))
  assert out.shape == (4, 64) + TAIL
  np.testing.assert_array_equal(out[0], np.asarray(x0))
  np.testing.assert_array_equal(out[3], np.asarray(x1))
  np.testing.assert_allclose(out[1], 0.5 * (np.asarray(x0) + np.asarray(x1)), rtol=0, atol=1e-7)
  ends = np.stack([x0, x1])
  rms = lambda v: np.sqrt(np.mean(v.reshape(-1, D) ** 2, axis=0))
  abar = float(sde.alphas_cumprod[4])
  for t_steps, spread in ((5, SD * np.sqrt((1 - abar) / (abar * SD ** 2 + 1 - abar))), (sde.N, SD)):
    out = np.asarray(interpolate(rng, None, x0, x1, t_steps, alphas))
    np.testing.assert_array_equal(out[1], out[2])
    ratio = rms(out[[0, 3]] - ends) / (np.sqrt(2.0) * spread)
    assert np.all((ratio > 0.75) & (ratio < 1.3)), (t_steps, ratio)


RD_SD = np.array([0.2, 0.1, 0.3, 0.05])  # inside [-1, 1] around MU: the quantised data is nearly Gaussian


def tiny_bound(sde, b=512, seed=9):
  """Per-step DDPM bound terms (bits/dim) and eq. 15 predictions for quantised Gaussian data with the chain's
  Gaussian score: vlb's per-step pieces with fixedsmall variances. One forward noise n serves every step,
  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) n, in antithetic pairs (x_0, +-n): the squared error of the
  posterior mean is then a smooth function of abar_t whose cross term d n averages to exactly 0, so the
  sample distortion falls wherever its expectation does (a 512-sample cross term would otherwise outweigh
  the ~1e-8 changes near t = N)."""
  c = vlb.chain_constants(sde, "fixedsmall")
  rs = np.random.RandomState(seed)
  x0 = np.clip(np.round((MU + RD_SD * rs.randn(b // 2, D)) * 127.5) / 127.5, -1, 1)
  noise = rs.randn(b // 2, D)
  x0, noise = np.concatenate([x0, x0]), np.concatenate([noise, -noise])
  bits = lambda nats: np.asarray(nats, np.float64).sum(1) / (D * np.log(2.0))
  preds, kls = [], []
  for j in range(sde.N):  # step i = j + 1
    x_t = np.sqrt(c["abar"][j]) * x0 + np.sqrt(c["one_m_abar"][j]) * noise
    preds.append(posterior_mean(x_t, c["abar"][j], sd=RD_SD))
    mean = c["coef_x0"][j] * preds[-1] + c["coef_xt"][j] * x_t
    if j:
      kls.append(bits(vlb.normal_kl(c["coef_x0"][j] * x0 + c["coef_xt"][j] * x_t, c["post_var"][j], mean,
                                    c["model_var"][j])))
    else:
      decoder = bits(-vlb.discretized_gaussian_log_likelihood(x0, preds[0], np.sqrt(c["model_var"][0])))
  prior = bits(vlb.normal_kl(np.sqrt(c["abar"][-1]) * x0, c["one_m_abar"][-1], 0.0, 1.0))
  return prior, np.stack(kls), decoder, x0, np.stack(preds)


def test_rate_distortion_curve():
  """Rate climbs from L_N to the whole bound, distortion falls to 0; both as reverse-process time runs."""
  sde = sde_lib.VPSDE(0.1, 20.0, 25)
  prior, kls, decoder, x0, preds = tiny_bound(sde)
  curve = latents.rate_distortion(prior, kls, decoder, x0.reshape((-1,) + TAIL),
                                  preds.reshape((sde.N, -1) + TAIL), np.arange(1, sde.N + 1))
  assert curve["num_steps"] == sde.N
  np.testing.assert_array_equal(curve["t"], np.arange(sde.N, -1, -1))
  rate, distortion = curve["rate"], curve["distortion"]
  assert np.all(np.diff(rate) >= 0) and rate[-2] > rate[0], rate
  np.testing.assert_allclose(rate[0], prior.mean(), rtol=1e-12)
  np.testing.assert_allclose(rate[-2], prior.mean() + kls.sum(0).mean(), rtol=1e-12)
  np.testing.assert_allclose(rate[-1], (prior + kls.sum(0) + decoder).mean(), rtol=1e-12)
  assert np.all(np.diff(distortion) < 0), distortion
  assert distortion[-1] == 0.0
  # RMSE = 127.5 sqrt(mean_k posterior variance_k) at every t, from 24.1 at t = N to 7.1 at t = 1.
  abar = np.asarray(sde.alphas_cumprod, np.float64)[::-1, None]
  expected = 127.5 * np.sqrt(np.mean(RD_SD ** 2 * (1 - abar) / (abar * RD_SD ** 2 + 1 - abar), axis=1))
  np.testing.assert_allclose(distortion[:-1], expected, rtol=0.05)
  # Any subset of steps, in any order, reads the same curve.
  sub = latents.rate_distortion(prior, kls, decoder, x0, preds[[4, 0, 24]], [5, 1, 25])
  np.testing.assert_array_equal(sub["t"], [25, 5, 1, 0])
  np.testing.assert_allclose(sub["rate"], rate[[0, 20, 24, 25]], rtol=1e-12)
  np.testing.assert_allclose(sub["distortion"], distortion[[0, 20, 24, 25]], rtol=1e-12)


def test_rate_distortion_from_the_bound_of_a_score_model():
  """get_rate_distortion_fn reads the curve off one `vlb` evaluation: its end is the bound vlb reports, its
  rate never falls, and with the exact score its distortion is the posterior's RMSE (the prediction is the
  posterior mean; 2,048 squared errors per step, so ~1.6% Monte Carlo error on the RMSE: 6% tolerance)."""
  sde = sde_lib.VPSDE(0.1, 20.0, 25)
  x0 = np.clip(np.round((MU + RD_SD * np.random.RandomState(3).randn(512, D)) * 127.5) / 127.5, -1, 1)
  x0 = jnp.asarray(x0.reshape((-1,) + TAIL), jnp.float32)
  score_fn = score_oracles.gaussian_score(sde, MU.reshape(TAIL), RD_SD.reshape(TAIL))
  steps = [25, 13, 5, 1]
  rng = jax.random.PRNGKey(4)
  curve = latents.get_rate_distortion_fn(sde, score_fn, steps, model_var="fixedsmall")(rng, None, x0)
  bound = vlb.get_vlb_fn(sde, score_fn, model_var="fixedsmall", clip_denoised=False)(rng, None, x0)
  np.testing.assert_array_equal(curve["t"], [25, 13, 5, 1, 0])
  np.testing.assert_allclose(curve["rate"][-1], float(np.mean(bound["bpd"])), rtol=1e-5)
  np.testing.assert_allclose(curve["rate"][0], float(np.mean(bound["prior"])), rtol=1e-5)
  assert np.all(np.diff(curve["rate"]) >= 0)
  abar = np.asarray(sde.alphas_cumprod, np.float64)[np.array(steps) - 1, None]
  expected = 127.5 * np.sqrt(np.mean(RD_SD ** 2 * (1 - abar) / (abar * RD_SD ** 2 + 1 - abar), axis=1))
  np.testing.assert_allclose(curve["distortion"][:-1], expected, rtol=0.06)
  with pytest.raises(ValueError, match="record_steps must be distinct whole DDPM steps"):
    latents.get_rate_distortion_fn(sde, score_fn, [0, 3])
  with pytest.raises(ValueError, match="DDPM chain"):
    latents.get_rate_distortion_fn(sde_lib.VESDE(), score_fn, [1])


def test_plot_rate_distortion_writes_a_png(tmp_path):
  pytest.importorskip("matplotlib")
  curve = dict(num_steps=4, t=np.arange(4, -1, -1), rate=np.array([0.0, 0.1, 0.5, 1.0, 2.0]),
               distortion=np.array([60.0, 30.0, 10.0, 1.0, 0.0]))
  path = latents.plot_rate_distortion(curve, str(tmp_path / "rd.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ bad input
def never_called(params, x, t, rng=None):
  raise AssertionError("the score was traced before the arguments were checked")


VP = sde_lib.VPSDE(0.1, 5.0, 10)
X = jnp.zeros((2,) + TAIL)
BAD = {
    "encoder eps": (lambda: latents.get_encoder(VP, never_called, eps=0.0), r"eps=0.0 must lie in"),
    "encoder method": (lambda: latents.get_decoder(VP, never_called, method="rk4"), "ODE method"),
    "encoder integer data": (lambda: latents.get_encoder(VP, never_called)(None, X.astype(jnp.int32)),
                             "float batch"),
    "slerp shapes": (lambda: latents.slerp(X, jnp.zeros((3,) + TAIL), [0.5]), "same shape"),
    "lerp weight": (lambda: latents.lerp(X, X, [0.0, 1.5]), r"weights in \[0, 1\]"),
    "slerp weights not a vector": (lambda: latents.slerp(X, X, 0.5), r"weights in \[0, 1\]"),
    "temperature": (lambda: latents.scale_temperature(X, -1.0), "temperature"),
    "temperature count": (lambda: latents.scale_temperature(X, [1.0, 2.0, 3.0]), "temperature"),
    "progressive VE": (lambda: latents.get_progressive_generation(sde_lib.VESDE(), never_called, X.shape),
                       "DDPM chain; VESDE"),
    "progressive sub-VP": (lambda: latents.get_progressive_generation(sde_lib.subVPSDE(), never_called,
                                                                      X.shape), "DDPM chain; subVPSDE"),
    "progressive records": (lambda: latents.get_progressive_generation(VP, never_called, X.shape, 11),
                            "num_records"),
    "interpolation VE": (lambda: latents.get_ddpm_interpolation(sde_lib.VESDE(), never_called), "DDPM chain"),
    "interpolation shapes": (lambda: latents.get_ddpm_interpolation(VP, never_called)(
        None, None, X, jnp.zeros((3,) + TAIL), 1, [0.5]), "same shape"),
    "interpolation t too large": (lambda: latents.get_ddpm_interpolation(VP, never_called)(
        None, None, X, X, 11, [0.5]), r"t_steps=11 .* \[0, N=10\]"),
    "interpolation t negative": (lambda: latents.get_ddpm_interpolation(VP, never_called)(
        None, None, X, X, -1, [0.5]), "t_steps=-1"),
    "interpolation t fractional": (lambda: latents.get_ddpm_interpolation(VP, never_called)(
        None, None, X, X, 2.5, [0.5]), "t_steps=2.5"),
    "interpolation weight": (lambda: latents.get_ddpm_interpolation(VP, never_called)(
        None, None, X, X, 1, [-0.1]), "alphas"),
    "rate-distortion step": (lambda: latents.rate_distortion(
        np.zeros(2), np.zeros((9, 2)), np.zeros(2), np.zeros((2, 4)), np.zeros((1, 2, 4)), [11]), "steps"),
    "rate-distortion shapes": (lambda: latents.rate_distortion(
        np.zeros(2), np.zeros((9, 2)), np.zeros(2), np.zeros((2, 4)), np.zeros((1, 3, 4)), [1]),
                               "x0_predictions"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_one_line_value_error(case):
  fn, pattern = BAD[case]
  with pytest.raises(ValueError, match=pattern) as info:
    fn()
  assert "\n" not in str(info.value)
