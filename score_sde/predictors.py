"""Predictors of the PC sampler (Song et al. 2021, §4.2, Algorithms 2-4): one step of a numerical solver of the
reverse-time SDE (or of the probability flow), from t to t - 1/N.

Every predictor takes only `(sde, score_fn)`, with `score_fn(params, x, t, rng=None)` as in
`score_sde.models.utils`; `x` is (B, H, W, C) (any rank >= 1 works) and `t` is (B,).

A new predictor is one decorated class, in this file or any other:

    from score_sde import predictors

    @predictors.register_predictor(name='my_predictor')
    class MyPredictor(predictors.Predictor):
      evals_per_step = 1  # score evaluations per call of update_fn (what the PC sampler's NFE counts)

      def update_fn(self, rng, params, x, t):
        ...
        return x, x_mean

and `pc_sampler.get_pc_sampler(..., predictor='my_predictor', ...)` (or `predictor=MyPredictor`, or
`config.sampling.predictor = 'my_predictor'`) uses it once the defining module has been imported.
"""
import abc

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampler_utils import bind_params, class_registry, expand


class Predictor(abc.ABC):
  """One step of a numerical solver of the reverse-time SDE (or of the probability flow), from t to t - 1/N.

  `update_fn(rng, params, x, t) -> (x, x_mean)`: x_mean is the step without its fresh noise (the denoised
  sample when this is the last step). `t` is (B,). `evals_per_step` counts the score evaluations per call.
  """

  evals_per_step = 1

  def __init__(self, sde, score_fn, probability_flow=False):
    self.sde = sde
    self.score_fn = score_fn
    self.probability_flow = bool(probability_flow)

  def reverse_sde(self, params):
    return self.sde.reverse(bind_params(self.score_fn, params), self.probability_flow)

  @abc.abstractmethod
  def update_fn(self, rng, params, x, t):
    """Returns (x, x_mean) at the next (smaller) time."""


register_predictor, get_predictor, registered_predictors = class_registry(Predictor, "predictor",
                                                                          "sampling.predictor")


def _discrete_index(sde, t):
  """i = floor(t (N - 1) / T): the index of the discrete chain at time t, as `sde_lib` computes it."""
  return (t * (sde.N - 1) / sde.T).astype(jnp.int32)


@register_predictor(name="euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
  """x_mean = x + f_rev(x, t) dt, x = x_mean + g(t) sqrt(-dt) z, with dt = -1/N (as in the 2021 code)."""

  def update_fn(self, rng, params, x, t):
    dt = -1.0 / self.sde.N
    z = jax.random.normal(rng, x.shape, x.dtype)
    drift, diffusion = self.reverse_sde(params).sde(x, t)
    x_mean = x + drift * dt
    x = x_mean + expand(diffusion, x) * np.sqrt(-dt) * z
    return x, x_mean


@register_predictor(name="reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
  """The reverse of the forward discretisation (Song et al. 2021, eq. 46): x_mean = x - f_rev, x = x_mean + G z.

  With probability_flow=True, G = 0 and the drift halves its score term: a deterministic step of the flow.
  """

  def update_fn(self, rng, params, x, t):
    f, g = self.reverse_sde(params).discretize(x, t)
    z = jax.random.normal(rng, x.shape, x.dtype)
    x_mean = x - f
    x = x_mean + expand(g, x) * z
    return x, x_mean


@register_predictor(name="ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
  """Ancestral sampling of the discrete chains: DDPM (VP, Ho et al. 2020 eq. 11 in score form) and SMLD (VE).

  VP: x_mean = (x + beta_i s) / sqrt(1 - beta_i), x = x_mean + sqrt(beta_i) z.
  VE: x_mean = x + (sigma_i^2 - sigma_{i-1}^2) s,
      x = x_mean + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) z, with sigma_{-1} = 0.
  Only these two SDEs have such a chain (sub-VP has none), and it has no probability-flow variant.
  """

  def __init__(self, sde, score_fn, probability_flow=False):
    super().__init__(sde, score_fn, probability_flow)
    if probability_flow:
      raise ValueError("sampling.predictor='ancestral_sampling' has no probability-flow variant; use "
                       "'reverse_diffusion' or 'euler_maruyama' with sampling.probability_flow=True.")
    if sde.discrete_chain not in ("ddpm", "smld"):
      raise ValueError(f"sampling.predictor='ancestral_sampling' needs a discrete Markov chain (VP: DDPM, "
                       f"VE: SMLD); {type(sde).__name__} has none. Use 'reverse_diffusion' or "
                       "'euler_maruyama' instead.")

  def update_fn(self, rng, params, x, t):
    i = _discrete_index(self.sde, t)
    score = self.score_fn(params, x, t)
    z = jax.random.normal(rng, x.shape, x.dtype)
    if self.sde.discrete_chain == "smld":
      sigmas = jnp.asarray(self.sde.discrete_sigmas)
      sigma = sigmas[i]
      sigma_prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
      gap = sigma ** 2 - sigma_prev ** 2
      x_mean = x + expand(gap, x) * score
      std = jnp.sqrt(sigma_prev ** 2 * gap / sigma ** 2)
    else:
      beta = jnp.asarray(self.sde.discrete_betas)[i]
      x_mean = (x + expand(beta, x) * score) / expand(jnp.sqrt(1.0 - beta), x)
      std = jnp.sqrt(beta)
    x = x_mean + expand(std, x) * z
    return x, x_mean


@register_predictor(name="none")
class NonePredictor(Predictor):
  """The identity: no predictor step (corrector-only sampling, e.g. NCSN's annealed Langevin dynamics)."""

  evals_per_step = 0

  def update_fn(self, rng, params, x, t):
    return x, x
