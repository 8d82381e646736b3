"""Controllable generation (inpainting, colorization, class-conditional sampling) against closed forms.

Every prior is Gaussian or a Gaussian mixture, so p_t, its score and the noisy posterior p_t(y | x) are exact
for VP, sub-VP and VE (m(t), std(t) from `sde.marginal_prob`); the only errors left are Monte Carlo, the
samplers' discretisation and, for inpainting, the replacement method itself.

Tolerances: K_SE Monte Carlo standard errors (sd / sqrt(n) for a mean, sd / sqrt(2 n) for a std) plus an
allowance for the sampler's bias at N = 250 steps: first-order weak error of the predictor and the stop at eps
(measured 0-4% of the std here, Monte Carlo included; allow 3%), and for the Langevin corrector at snr r a stationary variance
1 / (1 - r^2) too wide (r^2 / 2 = 1.3% of the std at r = 0.16; allow r^2 / 2 + 3%). Means get 3% of the sd.

Shapes are (B, 1, 1, C) with C > 1 (XLA:CPU is slow on arrays whose minor dimension is 1).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from score_sde import controllable_generation as cg
from score_sde import sde_lib
from tests import score_oracles

K_SE = 4.0
N_STEPS = 250
SNR = 0.16
SDES = {
    "vp": lambda n=N_STEPS: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "subvp": lambda n=N_STEPS: sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=n),
    "ve": lambda n=N_STEPS: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=n),
}
# (predictor, corrector) per SDE: the paper's defaults, with a Langevin corrector for VE.
STEPS = {"vp": ("euler_maruyama", "none"), "subvp": ("reverse_diffusion", "none"),
         "ve": ("reverse_diffusion", "langevin")}
identity = lambda x: x


def allowance(corrector):
  return 0.03 + (SNR ** 2 / 2 if corrector == "langevin" else 0.0)


def assert_gaussian(x, mean, sd, std_allow, what):
  """Columns of x (n, k) have the given means and stds, within K_SE standard errors + the allowances."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  m, s = x.mean(0), x.std(0)
  msg = f"{what}: mean {m} vs {mean}, std {s} vs {sd} (n = {n})"
  assert np.all(np.isfinite(x)), msg
  assert np.all(np.abs(m - mean) <= K_SE * sd / np.sqrt(n) + 0.03 * sd), msg
  assert np.all(np.abs(s - sd) <= (K_SE / np.sqrt(2 * n) + std_allow) * sd), msg
  return m, s


# ------------------------------------------------------------------------------------------------ inpainting
MU4 = np.array([0.5, -0.3, 0.2, -0.6])
SD4 = np.array([0.3, 0.5, 0.2, 0.4])


@pytest.mark.parametrize("name", sorted(SDES))
def test_inpainting_independent_gaussian(name):
  """Independent pixels: the known ones come back exactly, the filled-in ones follow the prior's marginal
  (which is also their exact conditional). VP uses a per-pixel random mask, sub-VP and VE one mask of shape
  (1, 1, 1, 4) broadcast over the batch."""
  sde = SDES[name]()
  b = 4096
  k_data, k_mask, k_run = jax.random.split(jax.random.PRNGKey(0), 3)
  data = jnp.asarray(MU4 + SD4 * np.asarray(jax.random.normal(k_data, (b, 1, 1, 4))), jnp.float32)
  if name == "vp":
    mask = jax.random.bernoulli(k_mask, 0.5, data.shape).astype(jnp.float32)
  else:
    mask = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
  predictor, corrector = STEPS[name]
  inpaint = cg.get_pc_inpainter(sde, score_oracles.gaussian_score(sde, MU4, SD4), predictor, corrector, identity,
                                snr=SNR, eps=sde.default_sampling_eps)
  x = np.asarray(inpaint(k_run, None, data, mask))
  known = np.broadcast_to(np.asarray(mask) == 1, x.shape)
  # Exact, bit for bit. For VE this also checks that x_mean's known pixels are the marginal's mean, not a noisy
  # draw: the last replacement is at t = 0, where VE's std is still sigma_min.
  np.testing.assert_array_equal(x[known], np.asarray(data)[known])
  x, unknown = x.reshape(b, 4), ~known.reshape(b, 4)
  for c in range(4):
    if unknown[:, c].any():
      assert_gaussian(x[unknown[:, c], c][:, None], MU4[c], SD4[c], allowance(corrector), f"{name} channel {c}")


# Two independent correlated pairs in the channels (0, 1) and (2, 3); channels 0 and 2 are known (= C_KNOWN).
PAIR_MU = np.array([[0.0, 0.0], [0.5, -0.5]])
PAIR_SD = np.array([[1.0, 1.0], [0.5, 1.0]])
PAIR_RHO = np.array([0.9, -0.8])
C_KNOWN = np.array([1.5, 1.0])


def pair_score(sde):
  """Exact score of p_t for the pairs: -(m^2 C + std^2 I)^{-1} (x - m mu), a 2x2 inverse per pair."""
  mu = jnp.asarray(PAIR_MU, jnp.float32)
  c00, c11 = jnp.asarray(PAIR_SD[:, 0] ** 2), jnp.asarray(PAIR_SD[:, 1] ** 2)
  c01 = jnp.asarray(PAIR_RHO * PAIR_SD[:, 0] * PAIR_SD[:, 1])

  def score_fn(params, x, t, rng=None):
    del params, rng
    m, std = sde.marginal_prob(jnp.ones_like(t), t)
    m, var = m[:, None], std[:, None] ** 2
    a, b, d = m ** 2 * c00 + var, m ** 2 * c01, m ** 2 * c11 + var  # (B, 2) per pair
    r = x.reshape(-1, 2, 2) - m[..., None] * mu
    det = a * d - b * b
    s0, s1 = (d * r[..., 0] - b * r[..., 1]) / det, (a * r[..., 1] - b * r[..., 0]) / det
    return -jnp.stack([s0, s1], -1).reshape(x.shape)

  return score_fn


def replacement_limit(beta_min=0.1, beta_max=20.0):
  """Mean and std at t = 0 of the unknown coordinates under VP replacement with a predictor only, N -> inf.

  Each fresh draw of the known coordinate x_k enters one step of size 1/N, so their noise averages out and
  the unknown y follows the reverse SDE with x_k pinned at its marginal mean m(t) c:
    dy/dtau = beta/2 y - beta s_y(m c, y, t),  s_y = -[P_yk (m c - m mu_k) + P_yy (y - m mu_y)],
  with tau = 1 - t, P = (m^2 C + std^2 I)^{-1}; linear, so y's mean and variance solve two linear ODEs,
  started from the prior N(0, 1)."""
  out = []
  for p in range(2):
    cov = np.array([[PAIR_SD[p, 0] ** 2, PAIR_RHO[p] * PAIR_SD[p].prod()],
                    [PAIR_RHO[p] * PAIR_SD[p].prod(), PAIR_SD[p, 1] ** 2]])

    def rhs(tau, state, p=p, cov=cov):
      t = 1.0 - tau
      log_m = -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min
      m, beta = np.exp(log_m), beta_min + t * (beta_max - beta_min)
      prec = np.linalg.inv(m * m * cov - np.expm1(2 * log_m) * np.eye(2))
      mean, var = state
      s_mean = -(prec[1, 0] * m * (C_KNOWN[p] - PAIR_MU[p, 0]) + prec[1, 1] * (mean - m * PAIR_MU[p, 1]))
      return [beta / 2 * mean + beta * s_mean, 2 * (beta / 2 - beta * prec[1, 1]) * var + beta]

    sol = integrate.solve_ivp(rhs, (0.0, 1.0), [0.0, 1.0], method="DOP853", rtol=1e-10, atol=1e-10)
    out.append((sol.y[0, -1], np.sqrt(sol.y[1, -1])))
  return np.array(out).T


@pytest.mark.parametrize("steps", [("vp", "euler_maruyama", "none"), ("ve", "reverse_diffusion", "langevin")],
                         ids=["vp-predictor-only", "ve-langevin"])
def test_inpainting_moves_toward_the_conditional(steps):
  """Correlated pairs, one coordinate known. Replacement is not exact conditioning: the unknown coordinate
  feels the known one only through the score, and while t is large the noisy known value says little about it
  (Sigma_t ~ std^2 I). With a predictor only, the result matches the N -> inf limit of replacement
  (`replacement_limit`, within Monte Carlo + the 3% allowance), which covers only 69% and 37% of the way from
  the prior mean to the conditional mean for these pairs. A Langevin corrector samples p_t(y | x_k) at every t,
  which at small t is nearly the conditional: with it, VE gets at least 80% of the way (empirical: 89-100% at
  N = 250, 93-100% at N = 300; more steps, more corrector iterations)."""
  name, predictor, corrector = steps
  sde = SDES[name]()
  b = 4096
  data = jnp.zeros((b, 1, 1, 4)).at[..., 0].set(C_KNOWN[0]).at[..., 2].set(C_KNOWN[1])
  mask = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
  inpaint = cg.get_pc_inpainter(sde, pair_score(sde), predictor, corrector, identity, snr=SNR,
                                eps=sde.default_sampling_eps)
  x = np.asarray(inpaint(jax.random.PRNGKey(1), None, data, mask)).reshape(b, 4)
  np.testing.assert_array_equal(x[:, [0, 2]], np.asarray(data).reshape(b, 4)[:, [0, 2]])
  y = x[:, [1, 3]]
  prior_mean = PAIR_MU[:, 1]
  cond_mean = prior_mean + PAIR_RHO * PAIR_SD[:, 1] / PAIR_SD[:, 0] * (C_KNOWN - PAIR_MU[:, 0])
  cond_sd = PAIR_SD[:, 1] * np.sqrt(1 - PAIR_RHO ** 2)
  progress = (y.mean(0) - prior_mean) / (cond_mean - prior_mean)
  if corrector == "none":
    limit_mean, limit_sd = replacement_limit()
    assert np.allclose((limit_mean - prior_mean) / (cond_mean - prior_mean), [0.69, 0.37], atol=0.01)
    assert_gaussian(y, limit_mean, limit_sd, allowance(corrector), f"{name} vs replacement limit")
    assert np.all((progress > 0.3) & (progress < 0.75)), progress
  else:
    # Measured: 100% and 89% of the way (Monte Carlo SE 1.2%), stds within 3% of the conditional's.
    assert np.all((progress > 0.8) & (progress < 1.1)), progress
    assert np.all(np.abs(y.std(0) / cond_sd - 1) < 0.1), (y.std(0), cond_sd)


# ------------------------------------------------------------------------------------------------ colorization
# The decoupled basis from its definition: grey axis, then two orthonormal colour axes.
BASIS = np.array([[1, 1, 1], [-2, 1, 1], [0, 1, -1]]) / np.sqrt([[3], [6], [2]])
COLOR_MU, COLOR_SD = np.array([0.4, -0.2, 0.3]), np.array([0.5, 0.3, 0.2])  # decoupled channels, independent


def test_decoupling_basis():
  np.testing.assert_allclose(cg.DECOUPLE, BASIS, atol=1e-15)
  np.testing.assert_allclose(cg.DECOUPLE @ cg.DECOUPLE.T, np.eye(3), atol=1e-15)
  # The 2021 code's matrix (its transpose, float32): first column (1, 1, 1)/sqrt(3).
  np.testing.assert_allclose(cg.DECOUPLE.T, [[0.577350, -0.816497, 0.0], [0.577350, 0.408248, 0.707107],
                                             [0.577350, 0.408248, -0.707107]], atol=1e-6)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 2, 2, 3))
  np.testing.assert_allclose(cg.couple(cg.decouple(x)), x, atol=1e-6)


def test_colorization_gaussian():
  """Prior: independent Gaussians in the decoupled basis (so correlated colours). Given the grey channel, the
  colour channels' conditional is their prior marginal. The samples keep the grey value (channel mean) to float
  precision and their colours follow N(COLOR_MU[1:], COLOR_SD[1:]^2). Checked through the affine scaler
  (x + 1) / 2, which maps the grey value the same way."""
  sde = SDES["subvp"]()
  b = 8192
  gauss = score_oracles.gaussian_score(sde, COLOR_MU, COLOR_SD)
  score_fn = lambda params, x, t, rng=None: cg.couple(gauss(params, cg.decouple(x), t))
  k_data, k_run = jax.random.split(jax.random.PRNGKey(2))
  grey = (COLOR_MU[0] + COLOR_SD[0] * np.asarray(jax.random.normal(k_data, (b, 1, 1, 1)))) / np.sqrt(3)
  gray = jnp.asarray(np.repeat(grey, 3, axis=-1), jnp.float32)
  colorize = cg.get_pc_colorizer(sde, score_fn, "reverse_diffusion", "langevin", lambda x: (x + 1) / 2, snr=SNR,
                                 eps=sde.default_sampling_eps)
  x = np.asarray(colorize(k_run, None, gray))
  assert x.shape == gray.shape
  np.testing.assert_allclose(x.mean(-1), (np.asarray(gray)[..., 0] + 1) / 2, rtol=0, atol=2e-6)
  y = np.asarray(cg.decouple(jnp.asarray(2 * x - 1))).reshape(-1, 3)
  assert_gaussian(y[:, 1:], COLOR_MU[1:], COLOR_SD[1:], allowance("langevin"), "colours")


# ------------------------------------------------------------------------------------------------ class-conditional
# Two components N(mu_k, S^2 I) in 4 dimensions, weights W; |mu_1 - mu_0| = 2 = 4 S: they overlap.
W = np.array([0.7, 0.3])
MIX_MU = np.array([[-0.5, -0.5, -0.5, -0.5], [0.5, 0.5, 0.5, 0.5]]) + np.array([0.2, 0.0, -0.2, 0.1])
S = 0.5


def component_logits(sde, x, t, log_w):
  """log w_k + log N(x; m mu_k, (m^2 S^2 + std^2) I): logits of the exact noisy posterior p_t(y | x)."""
  m, std = sde.marginal_prob(jnp.ones_like(t), t)
  var = (m * S) ** 2 + std ** 2
  flat = x.reshape(x.shape[0], 1, -1)
  sq = jnp.sum((flat - m[:, None, None] * jnp.asarray(MIX_MU, jnp.float32)) ** 2, -1)  # (B, 2)
  return log_w - 0.5 * sq / var[:, None] - 0.5 * flat.shape[-1] * jnp.log(var)[:, None]


def mixture_score(sde):
  """Exact score of p_t: the components' scores weighted by the posterior."""

  def score_fn(params, x, t, rng=None):
    del params, rng
    m, std = sde.marginal_prob(jnp.ones_like(t), t)
    var = ((m * S) ** 2 + std ** 2)[:, None, None, None, None]
    resp = jax.nn.softmax(component_logits(sde, x, t, jnp.log(W)), -1)[:, :, None, None, None]
    means = m[:, None, None, None, None] * jnp.asarray(MIX_MU, jnp.float32).reshape(1, 2, 1, 1, 4)
    return jnp.sum(resp * -(x[:, None] - means) / var, axis=1)

  return score_fn


@pytest.mark.parametrize("name", sorted(SDES))
def test_class_conditional_gaussian_mixture(name):
  """With the exact classifier, score + grad log p_t(y | x) is the score of p_t(x | y): samples for label k
  are N(mu_k, S^2 I). The rate at which they land in component k (argmax of the exact posterior at t = 0) is
  then Phi((d / 2 -+ S^2 log(w_0 / w_1) / d) / S) with d = |mu_1 - mu_0|: 0.986 for k = 0, 0.963 for k = 1
  (unconditional sampling would give 0.7 / 0.3)."""
  sde = SDES[name]()
  b = 4096
  classifier_fn = lambda cparams, x, t: component_logits(sde, x, t, cparams["log_w"])
  predictor, corrector = STEPS[name]
  sample = cg.get_pc_conditional_sampler(sde, mixture_score(sde), classifier_fn, (b, 1, 1, 4), predictor,
                                         corrector, identity, snr=SNR, eps=sde.default_sampling_eps)
  labels = jnp.arange(b) % 2
  x = np.asarray(sample(jax.random.PRNGKey(3), None, {"log_w": jnp.log(jnp.asarray(W, jnp.float32))}, labels))
  assert x.shape == (b, 1, 1, 4)
  landed = np.asarray(jnp.argmax(component_logits(sde, jnp.asarray(x), jnp.zeros(b), jnp.log(W)), -1))
  d = np.linalg.norm(MIX_MU[1] - MIX_MU[0])
  shift = S ** 2 * np.log(W[0] / W[1]) / d
  for k, exact in ((0, stats.norm.cdf((d / 2 + shift) / S)), (1, stats.norm.cdf((d / 2 - shift) / S))):
    group = np.asarray(labels) == k
    rate = np.mean(landed[group] == k)
    # Monte Carlo: K_SE binomial standard errors; bias: the std allowance shifts the rate by < 0.01.
    assert abs(rate - exact) < K_SE * np.sqrt(exact * (1 - exact) / group.sum()) + 0.01, (k, rate, exact)
    assert_gaussian(x[group].reshape(-1, 4), MIX_MU[k], np.full(4, S), allowance(corrector), f"{name} label {k}")


# ------------------------------------------------------------------------------------------------ structure, input
def _never_called(params, x, t, rng=None):
  raise AssertionError("the score was traced: the input check came too late")


def test_bad_input_is_refused_before_tracing():
  sde = SDES["vp"](50)
  rng = jax.random.PRNGKey(0)
  inpaint = cg.get_pc_inpainter(sde, _never_called, "euler_maruyama", "none", identity, snr=SNR)
  data = jnp.zeros((4, 2, 2, 3))
  with pytest.raises(ValueError, match=r"mask has shape \(4, 2, 2, 2\).*\(4, 2, 2, 3\)"):
    inpaint(rng, None, data, jnp.ones((4, 2, 2, 2)))
  with pytest.raises(ValueError, match="mask has shape"):
    inpaint(rng, None, data, jnp.ones((2, 2, 3)))  # no batch axis
  with pytest.raises(ValueError, match=r"only 0 \(to fill in\) and 1 \(known\).*0\.5"):
    inpaint(rng, None, data, jnp.full((4, 2, 2, 1), 0.5))
  colorize = cg.get_pc_colorizer(sde, _never_called, "euler_maruyama", "none", identity, snr=SNR)
  with pytest.raises(ValueError, match=r"\(B, H, W, 3\).*\(4, 2, 2, 4\)"):
    colorize(rng, None, jnp.zeros((4, 2, 2, 4)))
  with pytest.raises(ValueError, match="channels must be equal"):
    colorize(rng, None, jnp.zeros((4, 2, 2, 3)).at[0, 0, 0, 1].set(0.1))
  classifier_fn = lambda cparams, x, t: jnp.zeros((x.shape[0], 10))
  sample = cg.get_pc_conditional_sampler(sde, _never_called, classifier_fn, (4, 2, 2, 3), "euler_maruyama",
                                         "none", identity, snr=SNR)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*from 0 to 10"):
    sample(rng, None, None, jnp.array([0, 1, 2, 10]))
  with pytest.raises(ValueError, match=r"from -1 to"):
    sample(rng, None, None, jnp.array([0, -1, 2, 3]))
  with pytest.raises(ValueError, match=r"shape \(4,\), one per example; got int32 of shape \(3,\)"):
    sample(rng, None, None, jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match="integers"):
    sample(rng, None, None, jnp.zeros(4))
  bad_classifier = lambda cparams, x, t: jnp.zeros((x.shape[0],))
  sample = cg.get_pc_conditional_sampler(sde, _never_called, bad_classifier, (4, 2, 2, 3), "euler_maruyama",
                                         "none", identity, snr=SNR)
  with pytest.raises(ValueError, match=r"logits \(B, num_classes\)"):
    sample(rng, None, None, jnp.arange(4))


def test_each_sampler_is_one_compiled_loop():
  """Under an outer jit (values traced, so only the shape checks run), each function lowers to one program
  whose size does not grow with N: the time loop is a while loop, not unrolled."""
  shape = (4, 1, 1, 3)
  args = {
      "inpaint": (None, jnp.zeros(shape), jnp.ones(shape)),
      "colorize": (None, jnp.zeros(shape)),
      "sample": (None, None, jnp.arange(4) % 2),
  }
  sizes = {}
  for n in (50, 500):
    sde = SDES["vp"](n)
    score = score_oracles.gaussian_score(sde, 0.0, 1.0)
    fns = {
        "inpaint": cg.get_pc_inpainter(sde, score, "euler_maruyama", "langevin", identity, snr=SNR),
        "colorize": cg.get_pc_colorizer(sde, score, "euler_maruyama", "langevin", identity, snr=SNR),
        "sample": cg.get_pc_conditional_sampler(sde, score, lambda cp, x, t: x.reshape(4, -1)[:, :2], shape,
                                                "euler_maruyama", "langevin", identity, snr=SNR),
    }
    for key, fn in fns.items():
      text = jax.jit(fn).lower(jax.random.PRNGKey(0), *args[key]).as_text()
      sizes.setdefault(key, []).append((text.count("stablehlo.while") >= 1, len(text.splitlines())))
  for key, (small, large) in sizes.items():
    assert small == large and small[0], (key, sizes)
