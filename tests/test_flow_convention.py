"""Discrete DDPM models on the probability flow read with the continuous convention, as the 2021 code did.

A discrete VP model's score on the flow paths (likelihood, ODE sampler, its denoiser) uses label 999 t and the
marginal std (`get_score_fn(..., probability_flow=True)`). Oracle: Gaussian data N(0, s^2) per coordinate and
the exact noise predictor eps(x, 999 t) = -std(t) * score_t(x), whose flow has a closed-form density (see
tests/test_likelihood.py). Read with the chain's piecewise-constant std instead, the same network gives a
wrong density and a rough integrand.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import likelihood, sampling, sde_lib
from score_sde.models import utils as mutils
from tests import test_likelihood as tl

SD = np.full(4, 0.01)  # sharply peaked data: the std near t = 0 is where the two conventions differ most
MU = np.zeros(4)


class ExactNoisePredictor(nn.Module):
  """The noise predictor of Gaussian data N(MU, SD^2), as a network taking the continuous label 999 t."""
  sde: sde_lib.SDE

  @nn.compact
  def __call__(self, x, labels, train=False):
    t = labels.astype(jnp.float32) / 999.0
    m, std = self.sde.marginal_prob(jnp.ones_like(t), t)
    m, std = m[:, None, None, None], std[:, None, None, None]
    mu, sd = jnp.reshape(MU, tl.TAIL), jnp.reshape(SD, tl.TAIL)
    return std * (x - m * mu) / ((m * sd) ** 2 + std ** 2)  # = -std * score


def _bpd(sde, score_fn, x):
  fn = likelihood.get_likelihood_fn(sde, score_fn, tl.centred, hutchinson_type="exact", eps=tl.EPS)
  bpd, z, nfe = fn(jax.random.PRNGKey(0), {}, tl.to_batch(x))
  return np.asarray(bpd, np.float64), z, int(nfe)


def test_discrete_ddpm_flow_likelihood_is_exact_with_the_continuous_convention():
  sde = sde_lib.VPSDE(0.1, 20.0, 1000)
  net = ExactNoisePredictor(sde)
  x = MU + SD * np.random.RandomState(0).randn(64, 4)
  z_exact, _, logp_eps, logp_t = tl.gaussian_flow(sde, x, MU, SD)
  expected = -(logp_eps + tl.prior_logp(sde, z_exact) - logp_t) / (4 * np.log(2.0)) + 7.0

  flow_bpd, _, flow_nfe = _bpd(sde, mutils.get_score_fn(sde, net, continuous=False, probability_flow=True), x)
  np.testing.assert_allclose(flow_bpd, expected, rtol=0, atol=1e-3)
  # The chain's piecewise-constant std (the training convention) on the same network: +0.065 bits/dim on
  # average (0.14 per example), at 6x the NFE (715 vs 115: the solver steps through the jumps).
  chain_bpd, _, chain_nfe = _bpd(sde, mutils.get_score_fn(sde, net, continuous=False), x)
  error = chain_bpd - expected
  assert error.mean() > 0.03 and np.abs(error).mean() > 0.07, error
  assert chain_nfe > 3 * flow_nfe, (chain_nfe, flow_nfe)


def test_flow_convention_per_sde():
  """VP / sub-VP discrete -> continuous labels on the flow; VE discrete keeps its sigma-table index."""
  from tests.test_score_fn import LabelEcho  # pylint: disable=import-outside-toplevel
  t = jnp.array([1e-3, 0.3, 0.8, 1.0])
  x = jnp.ones((4, 2, 2, 1))
  vp = sde_lib.VPSDE(0.1, 20.0, 1000)
  flow = mutils.get_score_fn(vp, LabelEcho(), continuous=False, probability_flow=True)({}, x, t)[:, 0, 0, 0]
  cont = mutils.get_score_fn(vp, LabelEcho(), continuous=True)({}, x, t)[:, 0, 0, 0]
  np.testing.assert_array_equal(np.asarray(flow), np.asarray(cont))
  ve = sde_lib.VESDE(0.01, 50.0, 1000)
  flow = mutils.get_score_fn(ve, LabelEcho(), continuous=False, probability_flow=True)({}, x, t)[:, 0, 0, 0]
  np.testing.assert_array_equal(np.asarray(flow), np.round((1.0 - np.asarray(t)) * 999))


@pytest.mark.parametrize("method,flow", [("pc", False), ("ode", True), ("heun", True), ("ddim", False)])
def test_samplers_declare_whether_they_integrate_the_flow(method, flow):
  from configs.vp.ddpm import cifar10  # pylint: disable=import-outside-toplevel
  config = cifar10.get_config()
  config.sampling.method = method
  assert sampling.uses_probability_flow(config) is flow
