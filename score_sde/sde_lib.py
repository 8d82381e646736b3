"""Forward SDEs of score-based generative modeling (Song et al. 2021, §3.4) and their reverse-time twins.

An SDE is a small object of closed-form coefficients. Shapes: `x` is (B, H, W, C) (any rank >= 1 works),
`t` is (B,). A new SDE is one subclass decorated with `@register_sde('name')`; samplers and likelihoods use
only this interface, so they work for it unchanged. To read a network as its score, the subclass also names its
`parameterization` (how the network's output and time labels become a score; see score_sde.parameterization).
"""
import abc

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.parameterization import NoisePrediction, ScoreOutput, marginal_std

_SDES = {}


def register_sde(name):
  """Class decorator registering an SDE under `config.training.sde == name`."""

  def _register(cls):
    if name in _SDES:
      raise ValueError(f"An SDE named {name!r} is already registered ({_SDES[name].__name__}).")
    cls.name = name
    _SDES[name] = cls
    return cls

  return _register


def registered_sdes():
  return sorted(_SDES)


def get_sde(config):
  """The SDE named by `config.training.sde`, with coefficients from `config.model`."""
  name = config.training.sde.lower()
  if name not in _SDES:
    raise ValueError(f"config.training.sde={config.training.sde!r} is not one of {registered_sdes()}.")
  return _SDES[name].from_config(config)


def _expand(v, x):
  """Broadcasts a per-example vector (B,) against x (B, ...)."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _sum_except_batch(x):
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


class SDE(abc.ABC):
  """dx = f(x, t) dt + g(t) dw on t in [0, T], discretised into N steps for sampling."""

  # Where samplers stop (t = eps): the score is unreliable at t = 0 (Song et al. 2021, App. C).
  default_sampling_eps = 1e-3
  # The discrete Markov chain that `discretize` follows and discrete (non-continuous) training uses: 'ddpm'
  # (discrete_betas, alphas, alphas_cumprod) or 'smld' (discrete_sigmas, ascending); None when the SDE has
  # none and `discretize` is Euler-Maruyama.
  discrete_chain = None

  def __init__(self, N):
    if int(N) < 1:
      raise ValueError(f"model.num_scales={N} must be a positive number of discretisation steps.")
    self.N = int(N)

  @property
  def T(self):
    return 1.0

  @abc.abstractmethod
  def sde(self, x, t):
    """(drift f(x, t), diffusion g(t)); the drift has x's shape, the diffusion is (B,)."""

  @abc.abstractmethod
  def marginal_prob(self, x, t):
    """(mean, std) of the perturbation kernel p_{0t}(x(t) | x(0) = x); std is (B,)."""

  @abc.abstractmethod
  def prior_sampling(self, rng, shape):
    """A sample of p_T."""

  @abc.abstractmethod
  def prior_logp(self, z):
    """log p_T(z), one value per example."""

  def discretize(self, x, t):
    """(f, G) of x_{i+1} = x_i + f + G z. Default: Euler-Maruyama with step T/N."""
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def corrector_alpha(self, t):
    """alpha_i in the Langevin corrector's step size (Algorithm 5); 1 unless a discrete chain defines it."""
    return jnp.ones_like(t)

  def reverse(self, score_fn, probability_flow=False):
    """The reverse-time SDE (eq. 6), or the probability-flow ODE (eq. 13), for `score_fn(x, t)`."""
    return ReverseSDE(self, score_fn, probability_flow)

  def parameterization(self, continuous, probability_flow=False):
    """How a network trained on this SDE is read as its score: a `parameterization.Parameterization`.

    Args:
      continuous: the network was trained with continuous time labels (else with the discrete chain's).
      probability_flow: the score drives a probability-flow path (ODE sampler, likelihood, encoder); an SDE
        may read a discrete model with its continuous convention there (VP does, VE does not).
    """
    raise NotImplementedError(f"No network-to-score convention for SDE {type(self).__name__}: define its "
                              "parameterization(continuous, probability_flow) (see score_sde.parameterization).")


class ReverseSDE:
  """dx = [f - g^2 s(x, t) (1/2 for the flow)] dt + g dw-bar, integrated from T back to 0.

  `score_fn(x, t)` has its parameters bound already (e.g. with functools.partial).
  """

  def __init__(self, forward, score_fn, probability_flow=False):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward.N

  @property
  def T(self):
    return self.forward.T

  def _reverse(self, f, g, x, t):
    scale = 0.5 if self.probability_flow else 1.0
    f = f - _expand(g ** 2, x) * self.score_fn(x, t) * scale
    g = jnp.zeros_like(g) if self.probability_flow else g
    return f, g

  def sde(self, x, t):
    return self._reverse(*self.forward.sde(x, t), x, t)

  def discretize(self, x, t):
    """Reverse of the forward discretisation: f_rev = f - G^2 s (x 0.5 for the flow), G_rev = G (0)."""
    return self._reverse(*self.forward.discretize(x, t), x, t)


def _standard_normal_logp(z):
  d = np.prod(z.shape[1:])
  return -0.5 * d * np.log(2 * np.pi) - 0.5 * _sum_except_batch(z ** 2)


@register_sde("vpsde")
class VPSDE(SDE):
  """Variance preserving SDE (eq. 11), the continuous limit of DDPM: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw."""

  discrete_chain = "ddpm"
  # The 2021 continuous VP label: 999 t whatever N (DDPM's timestep range at N = 1000).
  continuous_label_scale = 999

  def __init__(self, beta_min=0.1, beta_max=20.0, N=1000):
    super().__init__(N)
    if not 0 <= beta_min < beta_max:
      raise ValueError(f"VP SDE needs 0 <= model.beta_min < model.beta_max, got {beta_min}, {beta_max}.")
    if beta_max / self.N >= 1:
      raise ValueError(f"VP SDE with model.beta_max={beta_max} needs model.num_scales > {beta_max} so that "
                       "every discrete beta_i = beta(t)/N stays below 1.")
    self.beta_0 = float(beta_min)
    self.beta_1 = float(beta_max)
    # The DDPM chain: beta_i = beta_min/N .. beta_max/N (1e-4 .. 0.02 at N = 1000), in float64 then float32.
    betas = np.linspace(beta_min / self.N, beta_max / self.N, self.N, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    self.discrete_betas = betas.astype(np.float32)
    self.alphas = (1.0 - betas).astype(np.float32)
    self.alphas_cumprod = alphas_cumprod.astype(np.float32)
    self.sqrt_alphas_cumprod = np.sqrt(alphas_cumprod).astype(np.float32)
    self.sqrt_1m_alphas_cumprod = np.sqrt(1.0 - alphas_cumprod).astype(np.float32)

  @classmethod
  def from_config(cls, config):
    return cls(beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=config.model.num_scales)

  def beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def _log_mean_coeff(self, t):
    # log of exp(-1/2 int_0^t beta(s) ds)
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def sde(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * _expand(beta_t, x) * x, jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = _expand(jnp.exp(log_mean_coeff), x) * x
    std = jnp.sqrt(-jnp.expm1(2.0 * log_mean_coeff))  # 1 - e^x without cancellation at small t
    return mean, std

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z)

  def _timestep(self, t):
    return (t * (self.N - 1) / self.T).astype(jnp.int32)

  def discretize(self, x, t):
    """The DDPM chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z (DDPM eq. 2)."""
    i = self._timestep(t)
    beta = jnp.asarray(self.discrete_betas)[i]
    alpha = jnp.asarray(self.alphas)[i]
    f = _expand(jnp.sqrt(alpha), x) * x - x
    return f, jnp.sqrt(beta)

  def corrector_alpha(self, t):
    return jnp.asarray(self.alphas)[self._timestep(t)]

  def parameterization(self, continuous, probability_flow=False):
    """Noise prediction, score = -net / std. Continuous, and on every probability-flow path: label 999 t and
    the kernel's std. Discrete: the float label t (N - 1) (DDPM's time embedding reads it as a real time) and
    the chain's sqrt(1 - abar_i) at i = floor(t (N - 1))."""
    if continuous or probability_flow:
      return NoisePrediction(lambda t: t * self.continuous_label_scale, marginal_std(self))
    return NoisePrediction(
        lambda t: t * (self.N - 1),
        lambda t: jnp.asarray(self.sqrt_1m_alphas_cumprod)[(t * (self.N - 1)).astype(jnp.int32)])


@register_sde("subvpsde")
class subVPSDE(VPSDE):  # pylint: disable=invalid-name
  """sub-VP SDE (eq. 12): VP drift, diffusion sqrt(beta(t) (1 - exp(-2 int_0^t beta))); variance below VP's.

  It has no discrete chain of its own: `discretize` is Euler-Maruyama and the Langevin alpha is 1 (the
  2021 code read a missing `alphas` attribute here and crashed); networks always get VP's continuous labels.
  """

  discrete_chain = None

  def sde(self, x, t):
    beta_t = self.beta(t)
    drift = -0.5 * _expand(beta_t, x) * x
    discount = -jnp.expm1(-2.0 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return drift, jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = _expand(jnp.exp(log_mean_coeff), x) * x
    std = -jnp.expm1(2.0 * log_mean_coeff)  # no square root: the variance is (1 - e^{-int beta})^2
    return mean, std

  def discretize(self, x, t):
    return SDE.discretize(self, x, t)

  def corrector_alpha(self, t):
    return SDE.corrector_alpha(self, t)

  def parameterization(self, continuous, probability_flow=False):
    """VP's continuous noise prediction, whatever `continuous` (sub-VP has no chain to index)."""
    del continuous, probability_flow
    return VPSDE.parameterization(self, continuous=True)


@register_sde("vesde")
class VESDE(SDE):
  """Variance exploding SDE (eq. 9), the continuous limit of SMLD: dx = sqrt(d sigma^2(t)/dt) dw."""

  default_sampling_eps = 1e-5
  discrete_chain = "smld"

  def __init__(self, sigma_min=0.01, sigma_max=50.0, N=1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise ValueError(f"VE SDE needs 0 < model.sigma_min < model.sigma_max, got {sigma_min}, {sigma_max}.")
    self.sigma_min = float(sigma_min)
    self.sigma_max = float(sigma_max)
    # SMLD noise levels, ascending in t (index 0 = sigma_min).
    self.discrete_sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), self.N)).astype(np.float32)

  @classmethod
  def from_config(cls, config):
    return cls(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max, N=config.model.num_scales)

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x, t):
    diffusion = self.sigma(t) * np.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma(t)

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    d = np.prod(z.shape[1:])
    return -0.5 * d * np.log(2 * np.pi * self.sigma_max ** 2) - _sum_except_batch(z ** 2) / (2 * self.sigma_max ** 2)

  def discretize(self, x, t):
    """The SMLD chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z, with sigma_{-1} = 0."""
    i = (t * (self.N - 1) / self.T).astype(jnp.int32)
    sigmas = jnp.asarray(self.discrete_sigmas)
    sigma = sigmas[i]
    adjacent_sigma = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigma ** 2 - adjacent_sigma ** 2)

  def parameterization(self, continuous, probability_flow=False):
    """Score output. Continuous: label sigma(t). Discrete, on probability-flow paths too: the index
    round((T - t)(N - 1)) into the descending sigma table (NCSN-style networks gather sigmas[label], so a
    continuous label would be read as an out-of-range index)."""
    del probability_flow
    if continuous:
      return ScoreOutput(marginal_std(self))
    return ScoreOutput(lambda t: jnp.round((self.T - t) * (self.N - 1)).astype(jnp.int32), label_dtype=jnp.int32)
