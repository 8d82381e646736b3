"""Exact likelihoods of score-based models through the probability-flow ODE (Song et al. 2021, §4.3, App. D.2).

The probability flow dx/dt = f~(x, t) (eq. 13) is a neural ODE, so the instantaneous change of variables
(eq. 39-40) gives log p_0(x(0)) = log p_T(x(T)) + int_0^T div f~(x(t), t) dt. We integrate the augmented
state (x, int div f~) from eps to T in one diffrax solve inside jit (`flow.diffeqsolve`, the solver, step-size
rule and NFE convention of the ODE sampler) and replace p_T by the prior.

The divergence is the exact trace of the Jacobian (D forward-mode products per evaluation: small data only)
or the Hutchinson-Skilling estimate v^T (df~/dx) v with one Rademacher or Gaussian probe v per example,
drawn once and held fixed for the whole solve (as the 2021 code did): the integral of v^T J v is then an
unbiased estimate of the integral of tr J, at one `jax.jvp` per evaluation.

Bits per dimension. Data x in [0, 1] is uniformly dequantised upstream, y = (255 x + u) / 256, and mapped
to model space with the data scaler. For D-dimensional 8-bit data, -log2 P(x) / D <= -log2 p_y(y) / D + 8
(each 1/256-wide bin, Ho et al. 2020 §4 / Theis et al. 2016), and p_y(y) = p_model(scaler(y)) |scaler'|^D.
So bpd = -log2 p_model / D + offset with offset = 8 + log2(inverse_scaler'), which is 7 for centred data
([-1, 1], slope 1/2) and 8 for [0, 1] data. The offset is read off the inverse scaler's slope, which must be
constant (an affine scaler), so no separate 'centred' flag can disagree with the scaler actually used.
"""
import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import flow

HUTCHINSON_TYPES = ("rademacher", "gaussian", "exact")


def _sum_except_batch(v):
  return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def bpd_offset(inverse_scaler):
  """8 + log2(inverse_scaler'), the bits/dim added for 8-bit dequantised data (see the module docstring).

  The slope is evaluated at 0 and must be the same at -1, 0.5 and 1: the scaler must be affine, increasing.
  """
  slope_at = lambda v: float(jax.grad(lambda s: jnp.sum(inverse_scaler(s)))(jnp.float32(v)))
  slope = slope_at(0.0)
  if not (np.isfinite(slope) and slope > 0):
    raise ValueError(f"The inverse data scaler has slope {slope} at 0; likelihoods need an increasing affine "
                     "scaler such as datasets.get_data_inverse_scaler(config).")
  for v in (-1.0, 0.5, 1.0):
    if not np.isclose(slope_at(v), slope, rtol=1e-6, atol=0.0):
      raise ValueError("The inverse data scaler is not affine (its slope changes); bits/dim offsets assume an "
                       "affine scaler such as datasets.get_data_inverse_scaler(config).")
  return 8.0 + float(np.log2(slope))


def _check_data(data):
  if not jnp.issubdtype(data.dtype, jnp.floating) or data.ndim < 2:
    raise ValueError(f"data must be a float batch (B, H, W, C) in model space (after the data scaler), got "
                     f"{data.dtype} of shape {data.shape}.")


def _hutchinson_type(name):
  key = str(name).lower()
  if key not in HUTCHINSON_TYPES:
    raise ValueError(f"hutchinson_type={name!r} is not one of {list(HUTCHINSON_TYPES)} (case-insensitive).")
  return key


def _probe(rng, kind, shape, dtype):
  """The Hutchinson probe v with E[v v^T] = I: Rademacher (+-1) or standard normal entries."""
  if kind == "rademacher":
    return jax.random.rademacher(rng, shape, dtype=dtype)
  return jax.random.normal(rng, shape, dtype)


def _drift_and_divergence(drift, x, kind, probe):
  """(f~(x), div f~(x) per example). Examples do not interact, so the Jacobian is block-diagonal over the
  batch and one tangent carrying a probe per example yields every example's quadratic form at once."""
  if kind != "exact":
    f, jv = jax.jvp(drift, (x,), (probe,))
    return f, _sum_except_batch(probe * jv)
  # Exact trace: the column for coordinate k of every example at once; sum_k (J e_k)_k over the D coordinates.
  dims = int(np.prod(x.shape[1:]))
  basis = jnp.eye(dims, dtype=x.dtype).reshape((dims, 1) + x.shape[1:])
  # The primal f~(x) does not depend on the tangent, so vmap computes it once (out_axes None).
  f, columns = jax.vmap(lambda e: jax.jvp(drift, (x,), (jnp.broadcast_to(e, x.shape),)),
                        out_axes=(None, 0))(basis)
  diag = jnp.sum(columns * basis, axis=0)  # keeps coordinate k of column k
  return f, _sum_except_batch(diag)


def get_likelihood_fn(sde, score_fn, inverse_scaler, hutchinson_type="Rademacher", rtol=1e-5, atol=1e-5,
                      method="rk45", eps=1e-5, max_steps=16384):
  """Bits/dim of data under the probability-flow ODE of `(sde, score_fn)` (Song et al. 2021, App. D.2).

  Args:
    sde: an `sde_lib.SDE`.
    score_fn: `score_fn(params, x, t, rng=None)`.
    inverse_scaler: model space -> [0, 1] (affine); sets the bits/dim offset (`bpd_offset`).
    hutchinson_type: 'Rademacher' or 'Gaussian' (one probe per example, fixed for the solve), or 'exact'
      (the full Jacobian trace by D Jacobian-vector products per evaluation; for small data, e.g. tests).
    rtol, atol: the adaptive step-size controller's tolerances; the error norm is the RMS over the whole
      augmented state (every x and the log-density integrals), like the 2021 code's scipy RK45.
    method: an in-jit solver name from `flow.solver_names()` (not the ODE sampler's host-bound 'scipy_rk45').
      The default 'rk45' is the ODE sampler's pair, scipy's RK45 error estimate as the 2021 likelihood used, so
      NFE compare with its.
    eps: the time the data sits at; integration runs from eps to T.
    max_steps: a solve needing more steps raises an error instead of returning a truncated result.

  Returns:
    A jit-compiled `likelihood_fn(rng, params, data) -> (bpd, z, nfe)`. data is in model space (after the
    scaler), already dequantised, shape (B, H, W, C); rng draws the probes (unused for 'exact'). bpd (B,) =
    -(prior_logp(z) + int div) / ln 2 / D + offset; z is the latent x(T); nfe counts evaluations of the
    augmented drift, each one score evaluation with its Jacobian-vector product(s) (one tangent, or D
    batched tangents for 'exact'), with `flow.diffeqsolve`'s convention.
  """
  kind = _hutchinson_type(hutchinson_type)
  flow.solver(method)  # fail fast on an unknown name (in-jit solvers only, not the host-bound 'scipy_rk45')
  if not 0 < eps < sde.T:
    raise ValueError(f"eps={eps} must lie in (0, T={sde.T}): the likelihood integrates from eps to T.")
  offset = bpd_offset(inverse_scaler)

  def augmented(t, state, args):
    params, probe = args
    drift = lambda y: flow.flow_drift(sde, score_fn, params, y, t)
    return _drift_and_divergence(drift, state[0], kind, probe)

  def likelihood_fn(rng, params, data):
    data = jnp.asarray(data)
    _check_data(data)
    probe = _probe(rng, kind, data.shape, data.dtype) if kind != "exact" else jnp.zeros_like(data)
    y0 = (data, jnp.zeros(data.shape[:1], data.dtype))
    # The flow's own solve (step-size rule, max_steps, NFE convention), on the augmented state.
    (z, delta_logp), nfe = flow.diffeqsolve(diffrax.ODETerm(augmented), y0, eps, sde.T, (params, probe), rtol,
                                            atol, method, max_steps)
    dims = np.prod(data.shape[1:])
    # log p_eps(x) = log p_T(z) + int_eps^T div f~ dt (eq. 39), with the prior standing in for p_T.
    bpd = -(sde.prior_logp(z) + delta_logp) / np.log(2.0) / dims + offset
    return bpd, z, nfe

  return jax.jit(likelihood_fn)
