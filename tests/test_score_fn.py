"""Network-to-score conventions of the 2021 code (its models/utils.py) for every SDE x continuous/discrete, and
against the 2021 goldens."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import sde_lib
from score_sde.models import utils as mutils
from tests import reference_data


class LabelEcho(nn.Module):
  """A parameter-free 'network' whose output is the label it was fed, broadcast to x's shape."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    return jnp.broadcast_to(labels.astype(jnp.float32)[:, None, None, None], x.shape)


T = jnp.array([1e-3, 0.3, 0.8, 1.0])
X = jnp.ones((4, 2, 2, 1))


def echo(sde, continuous):
  out = mutils.get_score_fn(sde, LabelEcho(), train=False, continuous=continuous)({}, X, T)
  return np.asarray(out[:, 0, 0, 0], np.float64)


def test_vp_continuous_labels_999t_and_marginal_std():
  sde = sde_lib.VPSDE()
  std = np.asarray(sde.marginal_prob(X, T)[1])
  np.testing.assert_allclose(echo(sde, True), -999 * np.asarray(T) / std, rtol=1e-6)


def test_vp_discrete_labels_t_times_n_minus_1_and_chain_std():
  sde = sde_lib.VPSDE()
  labels = np.asarray(T) * 999
  alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # float64
  std = np.sqrt(1 - alphas_cumprod[labels.astype(np.float32).astype(np.int32)])
  np.testing.assert_allclose(echo(sde, False), -labels / std, rtol=1e-5)


@pytest.mark.parametrize("continuous", [True, False])
def test_subvp_always_uses_continuous_labels(continuous):
  sde = sde_lib.subVPSDE()
  std = 1 - np.exp(2 * sde._log_mean_coeff(np.asarray(T, np.float64)))  # pylint: disable=protected-access
  np.testing.assert_allclose(echo(sde, continuous), -999 * np.asarray(T) / std, rtol=1e-4)


def test_ve_continuous_label_is_sigma():
  sde = sde_lib.VESDE()
  np.testing.assert_allclose(echo(sde, True), 0.01 * 5000.0 ** np.asarray(T, np.float64), rtol=1e-5)


def test_ve_discrete_label_indexes_descending_sigmas():
  sde = sde_lib.VESDE()
  labels = echo(sde, False)
  np.testing.assert_array_equal(labels, np.round((1 - np.asarray(T)) * 999))
  # Label 0 is the largest sigma: the descending list at the label equals the ascending one at N-1-label.
  desc = mutils.get_sigmas(0.01, 50.0, 1000)
  np.testing.assert_allclose(desc[labels.astype(int)], sde.discrete_sigmas[999 - labels.astype(int)], rtol=1e-6)


def test_unknown_sde_has_no_score_convention():
  with pytest.raises(NotImplementedError, match="No network-to-score convention"):
    mutils.get_score_fn(_Bare(), LabelEcho())


class _Bare(sde_lib.SDE):

  def __init__(self):
    super().__init__(10)

  def sde(self, x, t):
    raise NotImplementedError

  def marginal_prob(self, x, t):
    raise NotImplementedError

  def prior_sampling(self, rng, shape):
    raise NotImplementedError

  def prior_logp(self, z):
    raise NotImplementedError


@pytest.mark.parametrize("name", ["ve_ncsnpp_continuous", "vp_ddpmpp_continuous", "vp_ddpm", "ve_ncsnv2"])
def test_golden_scores_through_the_2021_conventions(name):
  arrays, meta = reference_data.golden(name)
  config = reference_data.golden_config(meta)
  sde = sde_lib.get_sde(config)
  model = mutils.create_model(config)
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=meta["continuous"])
  score = score_fn(arrays["params"], jnp.asarray(arrays["x"]), jnp.asarray(arrays["t"]))
  tol = 1e-3 * float(np.std(arrays["score"]))
  np.testing.assert_allclose(score, arrays["score"], atol=tol)
