"""Few-step samplers beyond the 2021 paper: DDIM (Song, Meng & Ermon 2021) and Heun's method on the probability
flow (Karras et al. 2022, Algorithm 1). Both trade the PC sampler's N = 1000 steps for K ~ 50.

Both work in the variables of the perturbation kernel p_0t(x(t) | x(0)) = N(m(t) x(0), s(t)^2 I) of
`sde.marginal_prob`: the scaled state y = x / m(t) and the noise level sigma(t) = s(t) / m(t). For every linear
SDE (VP, sub-VP, VE) the probability-flow ODE (Song et al. 2021, eq. 13) is exactly

    dy / dsigma = -sigma m(t) s_theta(m(t) y, t)                                      (Karras et al. 2022, eq. 4)

(dy/dt = -g^2 s_theta / (2 m^2) and d(sigma^2)/dt = g^2 / m^2). Its right side is (y - E[x(0) | x(t)]) / sigma:
nearly constant along a trajectory, which is why a handful of steps suffice.

- `ddim`, VP only: with eps_hat = -s(t) s_theta(x, t) (the network's noise prediction), deterministic DDIM
  (eta = 0; DDIM eq. 12) is Euler's method for the ODE above, one score evaluation per step; eta > 0 adds
  DDIM's fresh noise (eq. 16; eta = 1 is DDPM's ancestral sampler on the coarse grid).
- `heun`, any SDE: the explicit trapezoid rule (Euler predictor, trapezoid corrector) for the same ODE, second
  order, two evaluations per step except the last (an Euler step: sigma at t = eps is tiny and the corrector
  would double the cost of a step that barely moves), so NFE = 2K - 1.

Time grids (K steps, K + 1 times from T down to eps) are named: 'uniform' in t, 'quadratic' (dense near eps,
DDIM's choice for CIFAR-10), 'edm' (uniform in sigma^(1/7), Karras et al. 2022 eq. 5). They are computed once,
in float64, when the sampler is built; the step loop is one `lax.fori_loop` inside one `jax.jit`.

NFE counts every score evaluation, the optional final denoising included (unlike the ODE sampler, which follows
the 2021 code in leaving that one out). Heun's optional denoising is `flow.denoise_step`, the ODE sampler's.

Both are registered in `score_sde.sampling` ('ddim', and 'heun' as a probability-flow sampler) by the decorated
builders at the end of this file.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import flow, sampling
from score_sde.sampler_utils import constrain, initial_state

_RHO = 7.0  # Karras et al. 2022, eq. 5: the exponent of the 'edm' grid
_TIME_GRIDS = ("uniform", "quadratic", "edm")


def _noise_levels(sde, t):
  """(m(t), s(t)) of the perturbation kernel, float64 numpy, at the times `t` (a 1-D numpy array)."""
  t = jnp.asarray(t, jnp.float32)
  mean, std = sde.marginal_prob(jnp.ones_like(t), t)
  return np.asarray(mean, np.float64), np.asarray(std, np.float64)


def time_grid(sde, num_steps, eps, kind="uniform"):
  """K + 1 = num_steps + 1 decreasing times from sde.T to eps (float64 numpy): the grid of a K-step sampler.

  'uniform': linspace(T, eps). 'quadratic': eps + (T - eps) (1 - i/K)^2, dense near the data where the score
  changes fastest. 'edm': sigma(t) = s(t) / m(t) uniform in sigma^(1/7), inverted numerically (sigma is
  monotone in t for every SDE here).
  """
  num_steps, kind = int(num_steps), str(kind).lower()
  if num_steps < 1:
    raise ValueError(f"sampling.num_steps={num_steps} must be >= 1.")
  if not 0.0 <= eps < sde.T:
    raise ValueError(f"The final time eps={eps} must lie in [0, T={sde.T}).")
  u = np.linspace(0.0, 1.0, num_steps + 1)
  if kind == "uniform":
    grid = sde.T + (eps - sde.T) * u
  elif kind == "quadratic":
    grid = eps + (sde.T - eps) * (1.0 - u) ** 2
  elif kind == "edm":
    dense = np.linspace(eps, sde.T, 65537)
    mean, std = _noise_levels(sde, dense)
    # Monotone by construction (float32 rounding could otherwise make a flat spot non-increasing).
    r = np.maximum.accumulate((std / mean) ** (1.0 / _RHO))
    grid = np.interp(r[-1] + (r[0] - r[-1]) * u, r, dense)
  else:
    raise ValueError(f"sampling.time_grid={kind!r} is not one of {list(_TIME_GRIDS)}.")
  grid[0], grid[-1] = sde.T, eps
  if not np.all(np.diff(grid) < 0):
    raise ValueError(f"sampling.num_steps={num_steps} is too many for a {kind!r} grid on [{eps}, {sde.T}]: "
                     "two times coincide in float64.")
  return grid


def _full(t, shape):
  return jnp.full((shape[0],), t, jnp.float32)


# ------------------------------------------------------------------------------------------------ DDIM
def get_ddim_sampler(sde, score_fn, shape, inverse_scaler, num_steps=50, eta=0.0, time_grid_kind="uniform",
                     denoise=True, eps=1e-3, sharding=None):
  """DDIM (Song, Meng & Ermon 2021, eq. 12) for VP models, on the continuous alpha_bar(t) = m(t)^2.

  From x at t_i to t_{i+1} (K steps on `time_grid(sde, K, eps, time_grid_kind)`):
    eps_hat = -s_i score(x, t_i),  x0_hat = (x - s_i eps_hat) / m_i,
    x = m_{i+1} x0_hat + sqrt(s_{i+1}^2 - c_i^2) eps_hat + c_i z,
    c_i = eta (s_{i+1} / s_i) sqrt(1 - m_i^2 / m_{i+1}^2)                                  (DDIM eq. 16)
  with m, s = `sde.marginal_prob` (s^2 = 1 - m^2 for VP). For a continuous-time model these are the exact
  coefficients of the model's own forward process at every t. For a discrete (DDPM) model the score function
  reads the label floor(t (N - 1)) and divides by the chain's sqrt(1 - alpha_bar_i), so its noise prediction is
  the network's output rescaled by s(t) / sqrt(1 - alpha_bar_i), and the step uses the continuous alpha_bar(t)
  instead of the chain's alpha_bar_i: at N = 1000 they differ by < 0.3% in s for 0.1 <= t <= 0.5, but by up
  to 3.4% in m(t) near T (the chain's sum of log(1 - beta_i) is not -sum beta_i) and 5% in s at t = 1e-3 (the
  label's one-step offset). That is a close approximation of DDIM on the trained chain, not DDIM's exact
  discrete update (docs/samplers.md).

  Args:
    sde: a `sde_lib.VPSDE` (sub-VP and VE are refused: use 'heun' for those).
    score_fn: `score_fn(params, x, t, rng=None)`.
    shape: the sample shape (B, H, W, C).
    inverse_scaler: model space -> data space (applied to the output).
    num_steps: K, the number of steps (K score evaluations).
    eta: 0 for the deterministic DDIM, 1 for DDPM-like ancestral noise, in between the family of eq. 16.
    time_grid_kind: 'uniform' | 'quadratic' | 'edm' (see `time_grid`).
    denoise: finish with x0_hat at eps (Tweedie's formula, DDIM's step to alpha_bar = 1), one more evaluation.
    eps: the last time of the grid.
    sharding: optional batch sharding (see `score_sde.sampling`).

  Returns:
    A jit-compiled `sampler(rng, params, z=None) -> (samples, nfe)`, nfe = K + denoise.
  """
  if sde.discrete_chain != "ddpm":  # the VP SDE: noise prediction and s(t)^2 = 1 - m(t)^2
    raise ValueError(f"sampling.method='ddim' needs a VP SDE (its noise prediction and DDIM's update assume "
                     f"s(t)^2 = 1 - m(t)^2); got {type(sde).__name__}. Use sampling.method='heun' instead.")
  eta = float(eta)
  if not eta >= 0.0:
    raise ValueError(f"sampling.ddim_eta={eta} must be >= 0.")
  ts = time_grid(sde, num_steps, eps, time_grid_kind)
  m, s = _noise_levels(sde, ts)
  noise_scale = eta * s[1:] / s[:-1] * np.sqrt(np.maximum(1.0 - (m[:-1] / m[1:]) ** 2, 0.0))
  if np.any(noise_scale > s[1:]):
    raise ValueError(f"sampling.ddim_eta={eta} is too large for this grid: the DDIM noise would exceed the "
                     "marginal noise level; use eta <= 1.")
  # Per-step coefficients, precomputed in float64: x0_hat = (x - s_i eps_hat) / m_i, then the step.
  coeffs = jnp.asarray(np.stack([ts[:-1], s[:-1], 1.0 / m[:-1], m[1:],
                                 np.sqrt(s[1:] ** 2 - noise_scale ** 2), noise_scale], 1), jnp.float32)
  stochastic = eta > 0.0
  nfe = int(num_steps) + int(bool(denoise))

  def sampler(rng, params, z=None):
    rng, prior_rng = jax.random.split(rng)
    x = initial_state(sde, prior_rng, shape, z, sharding)

    def body(i, carry):
      rng, x = carry
      x = constrain(x, sharding)
      t, s_i, inv_m_i, m_next, dir_next, noise_next = coeffs[i]
      eps_hat = -s_i * score_fn(params, x, _full(t, shape))
      x0_hat = (x - s_i * eps_hat) * inv_m_i
      x = m_next * x0_hat + dir_next * eps_hat
      if stochastic:
        rng, key = jax.random.split(rng)
        x = x + noise_next * jax.random.normal(key, x.shape, x.dtype)
      return rng, x

    _, x = jax.lax.fori_loop(0, coeffs.shape[0], body, (rng, x))
    if denoise:
      # Tweedie: E[x(0) | x(eps)] = (x + s^2 score) / m, the deterministic DDIM step to alpha_bar = 1.
      x = (x + np.float32(s[-1] ** 2) * score_fn(params, x, _full(ts[-1], shape))) / np.float32(m[-1])
    return constrain(inverse_scaler(x), sharding), jnp.asarray(nfe, jnp.int32)

  return jax.jit(sampler)


# ------------------------------------------------------------------------------------------------ Heun
def get_heun_sampler(sde, score_fn, shape, inverse_scaler, num_steps=50, time_grid_kind="uniform",
                     denoise=False, eps=1e-3, sharding=None):
  """Heun's method (explicit trapezoid rule) for the probability-flow ODE in (y, sigma) (module docstring).

  With d(y, i) = -sigma_i m_i score(m_i y, t_i) and h_i = sigma_{i+1} - sigma_i:
    y' = y + h_i d(y, i),  y = y + h_i (d(y, i) + d(y', i + 1)) / 2      for steps i = 0 .. K - 2,
    y = y + h_{K-1} d(y, K - 1)                                          (the last step, Euler),
  then x = m_K y at t = eps. Second order in the step size: halving the steps quarters the error.

  Args:
    sde: any `sde_lib.SDE` whose perturbation kernel is N(m(t) x0, s(t)^2) (VP, sub-VP, VE).
    score_fn, shape, inverse_scaler, eps, sharding: as for `get_ddim_sampler`.
    num_steps: K (>= 1).
    time_grid_kind: 'uniform' | 'quadratic' | 'edm' (see `time_grid`).
    denoise: finish with one reverse-diffusion mean step at eps, as the ODE sampler does.

  Returns:
    A jit-compiled `sampler(rng, params, z=None) -> (samples, nfe)`, nfe = 2K - 1 + denoise.
  """
  ts = time_grid(sde, num_steps, eps, time_grid_kind)
  m, s = _noise_levels(sde, ts)
  sigma = s / m
  # Per grid point: (t_i, the slope's factor -sigma_i m_i, m_i); per step: h_i.
  points = jnp.asarray(np.stack([ts, -sigma * m, m], 1), jnp.float32)
  steps = jnp.asarray(np.diff(sigma), jnp.float32)
  nfe = 2 * int(num_steps) - 1 + int(bool(denoise))

  def slope(params, y, i):
    t, factor, m_i = points[i]
    return factor * score_fn(params, m_i * y, _full(t, shape))

  def sampler(rng, params, z=None):
    x = initial_state(sde, rng, shape, z, sharding)
    y = x / np.float32(m[0])

    def body(i, y):
      y = constrain(y, sharding)
      d = slope(params, y, i)
      y_euler = y + steps[i] * d
      return y + 0.5 * steps[i] * (d + slope(params, y_euler, i + 1))

    y = jax.lax.fori_loop(0, steps.shape[0] - 1, body, y)
    y = y + steps[-1] * slope(params, y, steps.shape[0] - 1)
    x = np.float32(m[-1]) * y
    if denoise:
      x = flow.denoise_step(sde, score_fn, params, x, eps)
    return constrain(inverse_scaler(x), sharding), jnp.asarray(nfe, jnp.int32)

  return jax.jit(sampler)


# ------------------------------------------------------------------------------------------------ registered
@sampling.register_sampler("ddim")
def ddim_from_settings(s, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """Reads `settings.SamplingSettings` {noise_removal, num_steps, time_grid, ddim_eta}."""
  return get_ddim_sampler(sde, score_fn, shape, inverse_scaler, num_steps=s.num_steps, eta=s.ddim_eta,
                          time_grid_kind=s.time_grid, denoise=s.noise_removal, eps=eps, sharding=sharding)


@sampling.register_sampler("heun", probability_flow=True)
def heun_from_settings(s, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """Reads `settings.SamplingSettings` {noise_removal, num_steps, time_grid}."""
  return get_heun_sampler(sde, score_fn, shape, inverse_scaler, num_steps=s.num_steps, time_grid_kind=s.time_grid,
                          denoise=s.noise_removal, eps=eps, sharding=sharding)
