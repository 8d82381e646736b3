"""The predictor-corrector sampler (Song et al. 2021, §4.2, Algorithm 1 / App. G), compiled as one loop.

It combines a predictor (`score_sde.predictors`) and a corrector (`score_sde.correctors`), both picked by
registered name, and is registered as `config.sampling.method = 'pc'` (`score_sde.sampling`).

Counting function evaluations (NFE): each step class declares `evals_per_step` (score evaluations per call
of `update_fn`; 0 for 'none'), and the PC sampler reports N * (predictor + corrector evals per step). The 2021
code always reported N * (n_steps + 1), so an Euler-Maruyama-only P1000 run was reported as 2000 although it
evaluates the score 1000 times; here it is 1000, which is what the paper's "P1000" means.
"""
import jax
import jax.numpy as jnp

from score_sde import correctors, predictors, sampling
from score_sde.sampler_utils import constrain, initial_state


def get_pc_sampler(sde, score_fn, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, continuous=None, denoise=True, eps=1e-3, sharding=None):
  """Algorithm 1 of Song et al. 2021 (App. G), compiled as one `lax.fori_loop` over the N time steps.

  Args:
    sde: an `sde_lib.SDE`; its N sets the number of predictor steps.
    score_fn: `score_fn(params, x, t, rng=None)`.
    shape: the sample shape (B, H, W, C).
    predictor, corrector: registered names or `Predictor` / `Corrector` subclasses.
    inverse_scaler: maps model space back to data space (applied to the output).
    snr: the corrector's signal-to-noise ratio.
    n_steps: corrector iterations per time step.
    probability_flow: predict with the probability-flow ODE instead of the reverse SDE.
    continuous: accepted for API compatibility; `score_fn` already embeds the time-label convention.
    denoise: return the last step's mean (no noise added in the final step).
    eps: the final time; times are linspace(T, eps, N).
    sharding: optional sharding of the batch (e.g. `parallel.batch_sharding(mesh)`) for the prior draw, the
      loop state and the samples (see `score_sde.sampling`).

  Returns:
    A jit-compiled `sampler(rng, params, z=None) -> (samples, nfe)`; z, if given, replaces the prior
    sample at T (e.g. to compare with the ODE sampler from the same latent). nfe counts score evaluations:
    N * (predictor.evals_per_step + corrector.evals_per_step) (see the module docstring).
  """
  del continuous
  predictor_obj = predictors.get_predictor(predictor)(sde, score_fn, probability_flow)
  corrector_obj = correctors.get_corrector(corrector)(sde, score_fn, snr, n_steps)
  nfe = sde.N * (predictor_obj.evals_per_step + corrector_obj.evals_per_step)

  def sampler(rng, params, z=None):
    rng, prior_rng = jax.random.split(rng)
    x = initial_state(sde, prior_rng, shape, z, sharding)
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def body(i, carry):
      rng, x, _ = carry
      x = constrain(x, sharding)
      t = jnp.full((shape[0],), timesteps[i], dtype=x.dtype)
      rng, corrector_rng, predictor_rng = jax.random.split(rng, 3)
      x, x_mean = corrector_obj.update_fn(corrector_rng, params, x, t)
      x, x_mean = predictor_obj.update_fn(predictor_rng, params, x, t)
      return rng, x, x_mean

    _, x, x_mean = jax.lax.fori_loop(0, sde.N, body, (rng, x, x))
    return constrain(inverse_scaler(x_mean if denoise else x), sharding), jnp.asarray(nfe, jnp.int32)

  return jax.jit(sampler)


@sampling.register_sampler("pc")
def pc_from_settings(s, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """Reads `settings.SamplingSettings` {predictor, corrector, snr, n_steps_each, probability_flow, noise_removal}."""
  return get_pc_sampler(sde, score_fn, shape, s.predictor, s.corrector, inverse_scaler, snr=s.snr,
                        n_steps=s.n_steps_each, probability_flow=s.probability_flow, denoise=s.noise_removal,
                        eps=eps, sharding=sharding)
