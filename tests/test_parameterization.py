"""Each SDE says how a network's output and time labels become its score (`sde.parameterization`), and
`models.utils.get_score_fn` only asks it.

(a) For VP, sub-VP and VE x continuous/discrete x probability_flow, the labels a recording fake network
    receives and the scores it yields equal a transcription of the 2021 conventions written out here.
(b) A new SDE defined in this file, with its own parameterisation, works with get_score_fn and the PC sampler.
(c) An SDE without a parameterisation is refused with a one-line error naming it.
"""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import parameterization, sampling, sde_lib
from score_sde.models import utils as mutils

B0, B1, N = 0.1, 20.0, 1000
SMIN, SMAX = 0.01, 50.0
T = np.array([1e-3, 0.2, 0.2502, 0.5, 0.7777, 0.999, 1.0], np.float32)
X = np.random.RandomState(0).randn(len(T), 3, 3, 2).astype(np.float32)


class RecordingNet:
  """A fake network: records the labels it is fed and returns sin(x) + 0.01 label (as float32)."""

  def __init__(self):
    self.labels = []

  def apply(self, variables, x, labels, train=False, rngs=None):
    del variables, train, rngs
    self.labels.append(labels)
    return jnp.sin(x) + 0.01 * labels.astype(jnp.float32).reshape((-1, 1, 1, 1))


def net_output(labels):
  return np.sin(X.astype(np.float64)) + 0.01 * np.asarray(labels, np.float64).reshape((-1, 1, 1, 1))


# ------------------------------------------------------------------- the 2021 conventions, written out here
def vp_log_mean_coeff(t):
  return -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0


def reference(name, continuous, probability_flow):
  """(labels as the network must receive them, score in float64) of the 2021 models/utils.get_score_fn."""
  t64 = T.astype(np.float64)
  if name == "ve":
    if continuous:
      labels = SMIN * (SMAX / SMIN) ** jnp.asarray(T)  # the same float32 ops as the label the 2021 code fed
      return np.asarray(labels), net_output(labels)
    labels = np.round((np.float32(1.0) - T) * np.float32(N - 1)).astype(np.int32)
    return labels, net_output(labels)
  if name == "subvp" or continuous or probability_flow:  # continuous VP convention
    labels = T * np.float32(999)
    lmc = vp_log_mean_coeff(t64)
    std = 1 - np.exp(2 * lmc) if name == "subvp" else np.sqrt(1 - np.exp(2 * lmc))
  else:  # the DDPM chain: label t (N - 1), std sqrt(1 - abar_i) at i = floor(label)
    labels = T * np.float32(N - 1)
    abar = np.cumprod(1 - np.linspace(B0 / N, B1 / N, N, dtype=np.float64))
    std = np.sqrt(1 - abar)[labels.astype(np.int32)]
  return labels, -net_output(labels) / std.reshape((-1, 1, 1, 1))


SDES = {
    "vp": lambda: sde_lib.VPSDE(B0, B1, N),
    "subvp": lambda: sde_lib.subVPSDE(B0, B1, N),
    "ve": lambda: sde_lib.VESDE(SMIN, SMAX, N),
}


@pytest.mark.parametrize("name,continuous,probability_flow",
                         list(itertools.product(sorted(SDES), [True, False], [False, True])))
def test_get_score_fn_matches_the_2021_conventions(name, continuous, probability_flow):
  sde = SDES[name]()
  net = RecordingNet()
  score = mutils.get_score_fn(sde, net, train=False, continuous=continuous,
                              probability_flow=probability_flow)({}, jnp.asarray(X), jnp.asarray(T))
  ref_labels, ref_score = reference(name, continuous, probability_flow)
  (labels,) = net.labels
  assert labels.dtype == ref_labels.dtype, (labels.dtype, ref_labels.dtype)
  np.testing.assert_array_equal(np.asarray(labels), ref_labels)
  assert score.dtype == jnp.float32 and score.shape == X.shape
  np.testing.assert_allclose(np.asarray(score, np.float64), ref_score, rtol=1e-6, atol=1e-6)
  # The declared label dtype is the one fed (init code can build its dummy labels from it).
  p = sde.parameterization(continuous, probability_flow=probability_flow)
  assert jnp.dtype(p.label_dtype) == labels.dtype
  if not probability_flow:
    assert jnp.dtype(mutils.label_dtype(sde, continuous)) == labels.dtype
  assert p.predicts_noise is (name != "ve")


def test_get_score_fn_is_the_same_under_jit():
  for name, continuous in itertools.product(sorted(SDES), [True, False]):
    sde = SDES[name]()
    score_fn = mutils.get_score_fn(sde, RecordingNet(), continuous=continuous)
    eager = score_fn({}, jnp.asarray(X), jnp.asarray(T))
    jitted = jax.jit(score_fn)({}, jnp.asarray(X), jnp.asarray(T))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, err_msg=f"{name} {continuous}")


def test_discrete_chain_names_the_chain_the_sde_has():
  vp, subvp, ve = SDES["vp"](), SDES["subvp"](), SDES["ve"]()
  assert vp.discrete_chain == "ddpm" and subvp.discrete_chain is None and ve.discrete_chain == "smld"
  assert sde_lib.SDE.discrete_chain is None
  # 'ddpm': the DDPM tables, whose one-step discretisation is x sqrt(1 - beta_i) + sqrt(beta_i) z.
  t = jnp.asarray(T)
  x = jnp.asarray(X)
  f, g = vp.discretize(x, t)
  i = (T * (N - 1)).astype(np.int32)
  np.testing.assert_allclose(np.asarray(g), np.sqrt(vp.discrete_betas[i]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(f + x), np.sqrt(1 - vp.discrete_betas[i])[:, None, None, None] * X,
                             rtol=1e-5, atol=1e-6)
  # 'smld': ascending discrete sigmas, increments sqrt(sigma_i^2 - sigma_{i-1}^2).
  _, g = ve.discretize(x, t)
  s = ve.discrete_sigmas
  np.testing.assert_allclose(np.asarray(g), np.sqrt(s[i] ** 2 - np.where(i == 0, 0.0, s[np.maximum(i - 1, 0)]) ** 2),
                             rtol=1e-5)
  # None: Euler-Maruyama.
  _, g = subvp.discretize(x, t)
  _, diffusion = subvp.sde(x, t)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(diffusion * jnp.sqrt(1.0 / N)))


# ------------------------------------------------------------------------------- (b) a new SDE, one class
class NoiseScaledScore(parameterization.Parameterization):
  """The network outputs sigma(t) * score, conditioned on log(sigma(t)) / 4 (as in EDM's c_noise)."""

  def __init__(self, sigma):
    self.sigma = sigma

  def labels(self, t):
    return jnp.log(self.sigma(t)) / 4

  def to_score(self, output, x, t):
    return output / self.sigma(t).reshape((-1,) + (1,) * (output.ndim - 1))


class LinearVESDE(sde_lib.SDE):
  """dx = sigma_max sqrt(2 t) dw: a VE SDE with the linear schedule sigma(t) = sigma_max t (std exactly that)."""

  def __init__(self, sigma_max=10.0, N=200):  # pylint: disable=invalid-name
    super().__init__(N)
    self.sigma_max = sigma_max

  def sigma(self, t):
    return self.sigma_max * t

  def sde(self, x, t):
    return jnp.zeros_like(x), self.sigma_max * jnp.sqrt(2 * t)

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    d = np.prod(z.shape[1:])
    sq = jnp.sum(z ** 2, axis=tuple(range(1, z.ndim)))
    return -0.5 * d * np.log(2 * np.pi * self.sigma_max ** 2) - sq / (2 * self.sigma_max ** 2)

  def parameterization(self, continuous, probability_flow=False):
    return NoiseScaledScore(self.sigma)


DATA_STD = 0.5


class ExactNoiseScaledScore(nn.Module):
  """The exact 'network' for data N(0, DATA_STD^2): sigma * score, with sigma recovered from the label."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    sigma = jnp.exp(4 * labels).reshape((-1, 1, 1, 1))
    return -sigma * x / (DATA_STD ** 2 + sigma ** 2)


def test_new_sde_reads_its_network_through_get_score_fn():
  sde = LinearVESDE()
  net = RecordingNet()
  score = mutils.get_score_fn(sde, net, continuous=True)({}, jnp.asarray(X), jnp.asarray(T))
  (labels,) = net.labels
  sigma = 10.0 * T.astype(np.float64)
  np.testing.assert_allclose(np.asarray(labels), np.log(sigma) / 4, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(score), net_output(labels) / sigma.reshape((-1, 1, 1, 1)), rtol=1e-5)
  # The exact network gives the exact score of the perturbed Gaussian.
  exact = mutils.get_score_fn(sde, ExactNoiseScaledScore(), continuous=True)({}, jnp.asarray(X), jnp.asarray(T))
  np.testing.assert_allclose(np.asarray(exact), -X / (DATA_STD ** 2 + sigma ** 2).reshape((-1, 1, 1, 1)),
                             rtol=1e-4, atol=1e-6)


def test_new_sde_samples_with_the_pc_sampler():
  sde = LinearVESDE(sigma_max=10.0, N=200)
  score_fn = mutils.get_score_fn(sde, ExactNoiseScaledScore(), continuous=True)
  shape = (2048, 2, 2, 1)
  sampler = sampling.get_pc_sampler(sde, score_fn, shape, predictor="reverse_diffusion", corrector="none",
                                    inverse_scaler=lambda v: v, snr=0.16, eps=1e-3)
  samples, nfe = sampler(jax.random.PRNGKey(0), {})
  samples = np.asarray(samples, np.float64)
  assert samples.shape == shape and int(nfe) == sde.N
  assert np.all(np.isfinite(samples))
  assert abs(samples.mean()) < 0.03, samples.mean()
  np.testing.assert_allclose(samples.std(), DATA_STD, rtol=0.03)  # a score off by 1/sigma gives 0.79


# ----------------------------------------------------------------------------- (c) no parameterisation
class NoConvention(sde_lib.SDE):

  def __init__(self):
    super().__init__(10)

  def sde(self, x, t):
    return jnp.zeros_like(x), jnp.ones_like(t)

  def marginal_prob(self, x, t):
    return x, jnp.sqrt(2 * t)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * np.sqrt(2.0)

  def prior_logp(self, z):
    raise NotImplementedError


def test_sde_without_parameterization_is_refused_clearly():
  with pytest.raises(NotImplementedError, match="NoConvention") as err:
    mutils.get_score_fn(NoConvention(), RecordingNet(), continuous=True)
  assert "\n" not in str(err.value) and "parameterization" in str(err.value)
  with pytest.raises(NotImplementedError, match="NoConvention"):
    mutils.label_dtype(NoConvention(), continuous=False)
