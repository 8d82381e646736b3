"""The probability-flow ODE (Song et al. 2021, eq. 13, §4.3, App. D.2) and its compiled solve.

    dx/dt = f~(x, t) = f(x, t) - g(t)^2 s(x, t) / 2

shares its marginals with the forward SDE, so integrating it from T to eps samples (`score_sde.ode_sampler`),
from eps to T encodes data into latents (`get_ode_encoder`), and, with its divergence, gives exact likelihoods
(`score_sde.likelihood`). All of them solve through `diffeqsolve` here, so they share one solver table, one
step-size rule and one count of function evaluations:

- Solvers (`solver_names()`, `solver(method)`): diffrax's explicit Runge-Kutta pairs plus 'rk45', the 2021
  code's scipy RK45 in jit (`RK45`), the default everywhere. `ode_methods()` adds 'scipy_rk45', the ODE
  sampler's host-bound cross-check.
- Step size: a PID controller on the RMS error of the whole state (the whole batch is one ODE, as in the 2021
  code), with an explicit first step of 1% of the interval: with dt0=None diffrax would spend two uncounted
  evaluations choosing one (1% is what diffrax picks itself for reversed time).
- NFE: init_evals + evals_per_step * (attempted steps, rejected ones included), from diffrax's step
  statistics; first-same-as-last tableaus pay one evaluation up front and (stages - 1) per attempt. The counts
  are checked against an explicit evaluation counter in tests/test_sampling.py. Like the 2021 code, the one
  extra evaluation of the optional denoising step (`denoise_step`) is not included.
- A solve needing more than max_steps steps raises an error instead of returning a truncated result.
"""
import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sampler_utils import bind_params, constrain


class RK45(diffrax.Dopri5):
  """The 2021 code's solver in jit: Dormand-Prince 5(4) with scipy RK45's error estimate.

  Same stages and 5th-order solution as `diffrax.Dopri5`, which however estimates the error against Shampine's
  alternative embedded 4th-order weights, an estimate exactly 2/3 of the one from Dormand & Prince's (1980)
  weights that scipy's RK45 uses. At equal rtol/atol diffrax's pair thus takes ~8% longer steps (1.5^(1/5)) and,
  on the digits model, ~17% fewer evaluations than scipy (373 vs 452 NFE); with these weights the in-jit NFE
  matches scipy's, so NFE numbers compare with the paper's. The step-size rules still differ a little (diffrax
  never shrinks the step after an accepted one; scipy does, and caps the growth right after a rejection).
  """

  tableau = diffrax.ButcherTableau(
      a_lower=diffrax.Dopri5.tableau.a_lower, c=diffrax.Dopri5.tableau.c,
      b_sol=np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]),
      # b_sol minus Dormand & Prince's embedded 4th-order weights (scipy's RK45.E up to its sign).
      b_error=np.array([35 / 384 - 5179 / 57600, 0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
                        -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40]))


# name -> (diffrax solver class, score evaluations per attempted step, evaluations at initialisation).
_SOLVERS = {
    "rk45": (RK45, 6, 1),
    "dopri5": (diffrax.Dopri5, 6, 1),
    "tsit5": (diffrax.Tsit5, 6, 1),
    "bosh3": (diffrax.Bosh3, 3, 1),
    "heun": (diffrax.Heun, 2, 0),
    "dopri8": (diffrax.Dopri8, 13, 1),
}


# The 2021 code's host-bound scipy solve, kept as a cross-check by the ODE sampler only (no in-jit solver).
SCIPY_METHOD = "scipy_rk45"


def solver_names():
  """The in-jit solvers (`solver`, `diffeqsolve`, the encoder, the likelihood), sorted."""
  return sorted(_SOLVERS)


def ode_methods():
  """Every name `sampling.ode_method` accepts: the in-jit solvers and the ODE sampler's 'scipy_rk45'."""
  return solver_names() + [SCIPY_METHOD]


def solver(method):
  """`(solver_cls, evals_per_step, init_evals)` for a name of `solver_names()` (case-insensitive)."""
  key = str(method).lower()
  if key == SCIPY_METHOD:
    raise ValueError(f"ODE method {method!r} is the ODE sampler's host-bound cross-check, not an in-jit solver; "
                     f"use one of {solver_names()}.")
  if key not in _SOLVERS:
    raise ValueError(f"ODE method {method!r} is not one of the in-jit solvers {solver_names()}.")
  return _SOLVERS[key]


def flow_drift(sde, score_fn, params, x, t):
  """The probability-flow ODE's dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 at a scalar time t."""
  vec_t = jnp.full((x.shape[0],), t, dtype=x.dtype)
  return sde.reverse(bind_params(score_fn, params), probability_flow=True).sde(x, vec_t)[0]


def denoise_step(sde, score_fn, params, x, eps):
  """One reverse-diffusion predictor step at eps, keeping only its mean (the 2021 ODE sampler's denoiser)."""
  t = jnp.full((x.shape[0],), eps, dtype=x.dtype)
  f, _ = sde.reverse(bind_params(score_fn, params), probability_flow=False).discretize(x, t)
  return x - f


def diffeqsolve(term, y0, t0, t1, args, rtol, atol, method, max_steps):
  """Solves `term` (a `diffrax.ODETerm`) from y0 at t0 to t1 (either direction) with this module's step-size
  rule and NFE convention (module docstring). y0 may be any pytree (e.g. the likelihood's augmented state).

  Returns `(y(t1), nfe)`, y(t1) with y0's structure.
  """
  solver_cls, evals_per_step, init_evals = solver(method)
  sol = diffrax.diffeqsolve(
      term, solver_cls(), t0=t0, t1=t1, dt0=0.01 * (t1 - t0), y0=y0, args=args,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  nfe = init_evals + evals_per_step * sol.stats["num_steps"]
  return jax.tree_util.tree_map(lambda v: v[-1], sol.ys), nfe


def solve_flow(sde, score_fn, params, x, t0, t1, rtol=1e-5, atol=1e-5, method="rk45", max_steps=16384,
               sharding=None):
  """Integrates the probability flow from x at t0 to t1 (either direction) inside jit. Returns (x(t1), nfe).

  With `sharding`, the state is constrained to it at every evaluation; the error norm stays global.
  """
  term = diffrax.ODETerm(lambda t, y, p: flow_drift(sde, score_fn, p, constrain(y, sharding), t))
  return diffeqsolve(term, x, t0, t1, params, rtol, atol, method, max_steps)


def get_ode_encoder(sde, score_fn, rtol=1e-5, atol=1e-5, method="rk45", eps=1e-3, max_steps=16384):
  """The inverse of the ODE sampler (without denoising): data x (model space, i.e. after the scaler) at eps
  to its latent at T, by integrating the probability flow forwards (the paper's §4.3 encoding).

  Returns a jit-compiled `encode(params, x) -> (z, nfe)`.
  """
  solver(method)  # fail fast on an unknown name

  def encode(params, x):
    return solve_flow(sde, score_fn, params, x, eps, sde.T, rtol, atol, method, max_steps)

  return jax.jit(encode)
