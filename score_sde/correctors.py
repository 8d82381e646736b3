"""Correctors of the PC sampler (Song et al. 2021, §4.2, Algorithm 5 and NCSN's annealed Langevin dynamics):
score-based MCMC at a fixed time t, n_steps iterations per time step.

Every corrector takes only `(sde, score_fn)`, with `score_fn(params, x, t, rng=None)` as in
`score_sde.models.utils`, plus the signal-to-noise ratio `snr` and `n_steps`.

A new corrector is one decorated class, in this file or any other:

    from score_sde import correctors

    @correctors.register_corrector(name='my_corrector')
    class MyCorrector(correctors.Corrector):
      def update_fn(self, rng, params, x, t):
        ...  # self.n_steps iterations; evals_per_step defaults to n_steps score evaluations
        return x, x_mean

and `pc_sampler.get_pc_sampler(..., corrector='my_corrector', ...)` (or `config.sampling.corrector`) uses it.

Data parallelism: the Langevin step size uses norms averaged over the batch; under jit a mean over axis 0 is
global, also for a batch-sharded array, so it is the whole (all-device) batch's average, as Algorithm 5 intends.
"""
import abc

import jax
import jax.numpy as jnp

from score_sde.sampler_utils import class_registry, expand


class Corrector(abc.ABC):
  """Score-based MCMC at a fixed time t: `update_fn(rng, params, x, t) -> (x, x_mean)`, n_steps iterations."""

  def __init__(self, sde, score_fn, snr, n_steps=1):
    if int(n_steps) < 0:
      raise ValueError(f"sampling.n_steps_each={n_steps} must be >= 0.")
    self.sde = sde
    self.score_fn = score_fn
    self.snr = float(snr)
    self.n_steps = int(n_steps)

  @property
  def evals_per_step(self):
    return self.n_steps

  @abc.abstractmethod
  def update_fn(self, rng, params, x, t):
    """Returns (x, x_mean) after n_steps corrector iterations at time t."""


register_corrector, get_corrector, registered_correctors = class_registry(Corrector, "corrector",
                                                                          "sampling.corrector")


def _batch_mean_norm(v):
  """Per-example L2 norms averaged over the (global) batch (see the module docstring)."""
  return jnp.mean(jnp.linalg.norm(jnp.reshape(v, (v.shape[0], -1)), axis=-1))


class LangevinBase(Corrector):
  """x_mean = x + eps_i s(x, t), x = x_mean + sqrt(2 eps_i) z, repeated n_steps times at the same t.

  Subclasses define only `step_size`; this base is not registered itself.
  """

  @abc.abstractmethod
  def step_size(self, x, t, grad, noise):
    """eps_i / alpha_i for this iteration: a (B,) vector (alpha_i = sde.corrector_alpha(t) is applied after)."""

  def update_fn(self, rng, params, x, t):
    alpha = self.sde.corrector_alpha(t)

    def body(_, carry):
      rng, x, _ = carry
      rng, key = jax.random.split(rng)
      grad = self.score_fn(params, x, t)
      noise = jax.random.normal(key, x.shape, x.dtype)
      step = expand(self.step_size(x, t, grad, noise) * alpha, x)
      x_mean = x + step * grad
      x = x_mean + jnp.sqrt(2.0 * step) * noise
      return rng, x, x_mean

    _, x, x_mean = jax.lax.fori_loop(0, self.n_steps, body, (rng, x, x))
    return x, x_mean


@register_corrector(name="langevin")
class LangevinCorrector(LangevinBase):
  """Algorithm 5: eps_i = 2 alpha_i (snr |z| / |s|)^2, norms averaged over the global batch.

  alpha_i = sde.corrector_alpha(t): the DDPM alphas for VP, 1 for VE and sub-VP.
  """

  def step_size(self, x, t, grad, noise):
    ratio = self.snr * _batch_mean_norm(noise) / _batch_mean_norm(grad)
    return 2.0 * ratio ** 2 * jnp.ones_like(t)


@register_corrector(name="ald")
class AnnealedLangevinDynamics(LangevinBase):
  """Annealed Langevin dynamics of NCSN: eps_i = 2 alpha_i (snr sigma(t))^2, sigma(t) the marginal std."""

  def step_size(self, x, t, grad, noise):
    std = self.sde.marginal_prob(jnp.zeros_like(x), t)[1]
    return 2.0 * (self.snr * std) ** 2


@register_corrector(name="none")
class NoneCorrector(Corrector):
  """The identity: no corrector step (predictor-only sampling)."""

  @property
  def evals_per_step(self):
    return 0

  def update_fn(self, rng, params, x, t):
    return x, x
