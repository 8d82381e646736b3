"""Latent spaces of score models: the probability flow as an invertible encoder (Song et al. 2021, §4.3,
App. D), interpolation and temperature in its latent space, and the DDPM paper's probes of the discrete
chain (Ho et al. 2020, §4.3-4.4): progressive generation, interpolation after t diffusion steps and
rate-distortion curves.

- `get_encoder` / `get_decoder`: the probability flow (eq. 13) from eps to T and back, solved by
  `score_sde.flow` (the ODE sampler's solvers and step-size rule) without the denoising step, so each inverts
  the other to the solver's tolerance: the encoding is uniquely identifiable (§4.3).
- `slerp`, `lerp`, `scale_temperature`: interpolation and temperature scaling of latents (or images).
- DDPM tools for the VP SDE's discrete chain (`sde.discrete_chain == 'ddpm'`), any score model:
  `get_progressive_generation` (eq. 15, x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), along the
  ancestral chain, fig. 6), `get_ddpm_interpolation` (§4.4), `rate_distortion` and `plot_rate_distortion`
  (fig. 5, table 4). With eps = -sqrt(1 - abar_t) score, eq. 15 is Tweedie's formula: for the exact score it
  is the posterior mean E[x_0 | x_t].

Shapes: batches are (B, ...) in model space (after the data scaler); `alphas` is a vector (K,) of weights in
[0, 1] and interpolations are (K, B, ...). Bad arguments raise a one-line ValueError before anything compiles.
"""
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import flow, predictors
from score_sde.sampler_utils import expand, initial_state


# ------------------------------------------------------------------------------------------------ checks
def _float_batch(name, x):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 2:
    raise ValueError(f"{name} must be a float batch (B, ...) in model space, got {x.dtype} of shape {x.shape}.")
  return x


def _pair(x0, x1):
  x0, x1 = _float_batch("x0", x0), _float_batch("x1", x1)
  if x0.shape != x1.shape:
    raise ValueError(f"x0 and x1 must have the same shape, got {x0.shape} and {x1.shape}.")
  return x0, x1


def _weights(alphas, dtype):
  a = np.asarray(alphas, np.float64)
  if a.ndim != 1 or a.size == 0 or not np.all((a >= 0) & (a <= 1)):
    raise ValueError(f"alphas must be a non-empty vector of weights in [0, 1], got {np.asarray(alphas)!r}.")
  return jnp.asarray(a, dtype)


def _check_ddpm(sde, what):
  if getattr(sde, "discrete_chain", None) != "ddpm":
    raise ValueError(f"{what} needs the VP SDE's discrete DDPM chain; {type(sde).__name__} has none.")


# ------------------------------------------------------------------------------------------------ flow
def _flow_map(sde, score_fn, forward, rtol, atol, method, eps, max_steps):
  flow.solver(method)  # fail fast on an unknown name
  if not 0 < eps < sde.T:
    raise ValueError(f"eps={eps} must lie in (0, T={sde.T}).")
  t0, t1 = (eps, sde.T) if forward else (sde.T, eps)
  solve = jax.jit(lambda params, x: flow.solve_flow(sde, score_fn, params, x, t0, t1, rtol, atol, method,
                                                    max_steps)[0])
  return lambda params, x: solve(params, _float_batch("x" if forward else "z", x))


def get_encoder(sde, score_fn, rtol=1e-5, atol=1e-5, method="rk45", eps=1e-3, max_steps=16384):
  """`encode(params, x) -> z`: data x (model space) at eps to its latent at T along the probability flow."""
  return _flow_map(sde, score_fn, True, rtol, atol, method, eps, max_steps)


def get_decoder(sde, score_fn, rtol=1e-5, atol=1e-5, method="rk45", eps=1e-3, max_steps=16384):
  """`decode(params, z) -> x`: `get_encoder`'s inverse, T to eps (the ODE sampler with denoise=False)."""
  return _flow_map(sde, score_fn, False, rtol, atol, method, eps, max_steps)


# ------------------------------------------------------------------------------------------------ latents
@jax.jit
def _lerp(x0, x1, a):
  a = a.reshape((-1,) + (1,) * x0.ndim)
  return (1 - a) * x0 + a * x1


@jax.jit
def _slerp(z0, z1, a):
  flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
  norms = jnp.linalg.norm(flat0, axis=1) * jnp.linalg.norm(flat1, axis=1)
  cos = jnp.sum(flat0 * flat1, axis=1) / jnp.maximum(norms, jnp.finfo(z0.dtype).tiny)
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))  # (B,)
  sin = jnp.sin(omega)
  straight = sin < 1e-6  # (anti)parallel: no unique great circle, fall back to the chord
  safe = jnp.where(straight, 1.0, sin)
  w0 = jnp.where(straight, 1 - a[:, None], jnp.sin((1 - a[:, None]) * omega) / safe)  # (K, B)
  w1 = jnp.where(straight, a[:, None], jnp.sin(a[:, None] * omega) / safe)
  out = expand(w0, z0[None]) * z0 + expand(w1, z1[None]) * z1
  at = a.reshape((-1,) + (1,) * z0.ndim)
  return jnp.where(at == 0, z0, jnp.where(at == 1, z1, out))  # the endpoints exactly


def lerp(x0, x1, alphas):
  """(1 - a) x0 + a x1 for each weight a of `alphas`: (K, B, ...) from two batches (B, ...)."""
  x0, x1 = _pair(x0, x1)
  return _lerp(x0, x1, _weights(alphas, x0.dtype))


def slerp(z0, z1, alphas):
  """Spherical interpolation per example, (K, B, ...): (sin((1 - a) w) z0 + sin(a w) z1) / sin(w), w the angle
  between the flattened z0[b] and z1[b]. Equal norms stay on their sphere, as high-dimensional Gaussian
  latents (nearly orthogonal, norm ~ sigma sqrt(D)) stay on the prior's typical shell, which lerp's midpoint
  leaves by 1/sqrt(2). a = 0 and 1 return z0 and z1 exactly; (anti)parallel pairs fall back to lerp."""
  z0, z1 = _pair(z0, z1)
  return _slerp(z0, z1, _weights(alphas, z0.dtype))


def scale_temperature(z, temperature):
  """temperature * z (a scalar, or one per example).

  A prior N(0, sigma^2 I) draw scaled by tau is a draw of N(0, tau^2 sigma^2 I), proportional to the prior
  density raised to 1 / tau^2: tau < 1 moves latents toward the prior's mode (smoother, more typical
  decodes), tau > 1 away from it. VP / sub-VP: sigma = 1. VE: sigma = sigma_max, so the decoder starts from
  norm ~ tau sigma_max sqrt(D); a latent x(T) ~ x(0) + sigma_max n is mostly noise there, so the data part is
  scaled by tau as well, and the flow is still integrated from T (this is not starting at the noise level
  sigma(t) = tau sigma_max)."""
  z = _float_batch("z", z)
  tau = np.asarray(temperature, np.float64)
  if tau.ndim > 1 or (tau.ndim == 1 and tau.shape[0] != z.shape[0]) or not np.all(np.isfinite(tau) & (tau >= 0)):
    raise ValueError(f"temperature must be a finite value >= 0 or one per example, got {temperature!r}.")
  return z * expand(jnp.asarray(tau, z.dtype), z)


# ------------------------------------------------------------------------------------------------ DDPM chain
def _ancestral_step(sde, score_fn):
  """`step(rng, params, x, t) -> (x, x_mean, x0_hat)`: one ancestral step (the 'ancestral_sampling'
  predictor) and the eq. 15 prediction from the same score evaluation (the predictor is built on a
  pass-through score, so the precomputed score goes in where its parameters would)."""
  predictor = predictors.get_predictor("ancestral_sampling")(sde, lambda score, x, t: score)
  sqrt_abar = jnp.asarray(sde.sqrt_alphas_cumprod)
  sqrt_1m_abar = jnp.asarray(sde.sqrt_1m_alphas_cumprod)

  def step(rng, params, x, t):
    score = score_fn(params, x, t)
    i = (t * (sde.N - 1) / sde.T).astype(jnp.int32)  # the chain's index, as the predictor reads t
    eps_hat = -expand(sqrt_1m_abar[i], x) * score
    x0_hat = (x - expand(sqrt_1m_abar[i], x) * eps_hat) / expand(sqrt_abar[i], x)
    x, x_mean = predictor.update_fn(rng, score, x, t)
    return x, x_mean, x0_hat

  return step


def record_steps(sde, num_records):
  """The sampler steps j (0 = the first, at T; the chain index is N - 1 - j) that progressive generation
  records: `num_records` evenly spaced from the first to the last (just the last for one)."""
  k = int(num_records)
  if not 1 <= k <= sde.N:
    raise ValueError(f"num_records={num_records} must lie in [1, N={sde.N}].")
  return np.array([sde.N - 1]) if k == 1 else np.round(np.linspace(0, sde.N - 1, k)).astype(np.int32)


def get_progressive_generation(sde, score_fn, shape, num_records=10, eps=1e-3):
  """Ho et al. 2020 fig. 6: ancestral sampling with the eq. 15 prediction x0_hat recorded along the way.

  Returns a jit-compiled `generate(rng, params) -> (chain, x0_hat)`: chain (num_records + 1, *shape) holds
  x_t at the `record_steps` (chain[0] = x_T) and then x_0; x0_hat (num_records, *shape) the predictions
  from those x_t. The random stream, the times linspace(T, eps, N) and x_0 (the last step's mean) are the PC
  sampler's with predictor 'ancestral_sampling', corrector 'none' and noise removal, so chain[-1] is its
  sample for the same rng, and so is x0_hat[-1] (at the last step eq. 15 is the step's mean).
  """
  _check_ddpm(sde, "Progressive generation")
  records = record_steps(sde, num_records)
  stops = np.append(records[1:], sde.N)  # each record runs the unrecorded steps up to the next one
  step = _ancestral_step(sde, score_fn)

  def generate(rng, params):
    rng, prior_rng = jax.random.split(rng)
    x = initial_state(sde, prior_rng, shape)
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def advance(j, carry):
      rng, x, _ = carry
      rng, _, step_rng = jax.random.split(rng, 3)  # the PC sampler's (corrector, predictor) split
      x, x_mean, x0_hat = step(step_rng, params, x, jnp.full(shape[:1], timesteps[j], x.dtype))
      return (rng, x, x_mean), x0_hat

    def segment(carry, bounds):
      (start, stop), x_t = bounds, carry[1]
      carry, x0_hat = advance(start, carry)
      return jax.lax.fori_loop(start + 1, stop, lambda j, c: advance(j, c)[0], carry), (x_t, x0_hat)

    carry = jax.lax.fori_loop(0, int(records[0]), lambda j, c: advance(j, c)[0], (rng, x, x))
    (_, _, x0), (chain, x0_hat) = jax.lax.scan(segment, carry, (jnp.asarray(records), jnp.asarray(stops)))
    return jnp.concatenate([chain, x0[None]]), x0_hat

  return jax.jit(generate)


def get_ddpm_interpolation(sde, score_fn, eps=1e-3):
  """Ho et al. 2020 §4.4: x_t, x'_t ~ q(x_t | x_0) with one shared noise, x_t(a) = (1 - a) x_t + a x'_t
  decoded by the reverse chain from step t to x_0 (the last step's mean), with the same reverse noise for
  every a. t_steps = 0 returns lerp(x0, x1, alphas); t_steps = N decodes a (nearly) fresh sample.

  Returns `interpolate(rng, params, x0, x1, t_steps, alphas) -> (K, B, ...)`, compiled once for all t_steps.
  """
  _check_ddpm(sde, "DDPM interpolation")
  step = _ancestral_step(sde, score_fn)
  # q(x_t | x_0) = N(sqrt(abar_t) x_0, 1 - abar_t) indexed by the number of steps t (t = 0: x_0 itself).
  sqrt_abar = jnp.asarray(np.concatenate([[1.0], sde.sqrt_alphas_cumprod]), jnp.float32)
  sqrt_1m_abar = jnp.asarray(np.concatenate([[0.0], sde.sqrt_1m_alphas_cumprod]), jnp.float32)

  def decode(rng, params, x, t_steps):
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def body(j, carry):
      rng, x, _ = carry
      rng, step_rng = jax.random.split(rng)
      x, x_mean, _ = step(step_rng, params, x, jnp.full(x.shape[:1], timesteps[j], x.dtype))
      return rng, x, x_mean

    return jax.lax.fori_loop(sde.N - t_steps, sde.N, body, (rng, x, x))[2]

  @jax.jit
  def run(rng, params, x0, x1, t_steps, alphas):
    noise_rng, chain_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    diffuse = lambda x: sqrt_abar[t_steps] * x + sqrt_1m_abar[t_steps] * noise
    mixed = _lerp(diffuse(x0), diffuse(x1), alphas)
    return jax.vmap(decode, in_axes=(None, None, 0, None))(chain_rng, params, mixed, t_steps)

  def interpolate(rng, params, x0, x1, t_steps, alphas):
    x0, x1 = _pair(x0, x1)
    if isinstance(t_steps, (bool, np.bool_)) or not isinstance(t_steps, (int, np.integer)) or \
        not 0 <= t_steps <= sde.N:
      raise ValueError(f"t_steps={t_steps!r} must be a whole number of diffusion steps in [0, N={sde.N}].")
    return run(rng, params, x0, x1, jnp.int32(int(t_steps)), _weights(alphas, x0.dtype))

  return interpolate


# ------------------------------------------------------------------------------------------------ rate-distortion
def rate_distortion(prior, kl_terms, decoder_nll, x0, x0_predictions, steps, data_centered=True):
  """Ho et al. 2020 fig. 5 / table 4 from one evaluation of the variational bound (eq. 5), as numbers.

  A receiver holding x_t (t = N..1) has been sent L_N + sum_{i > t} L_{i-1} bits (the rate) and estimates x_0
  by eq. 15; the distortion is that estimate's RMSE on the [0, 255] scale, sqrt(||x_0 - x0_hat||^2 / D)
  averaged in the square over the batch (so for exact posterior means it cannot grow as t falls: x_t holds
  all that x_{t+1} does). At t = 0 it holds x_0 itself: the rate is the whole bound and the distortion 0.

  Args:
    prior: L_N = KL(q(x_N | x_0) || N(0, I)) in bits/dim, (B,) (or a scalar).
    kl_terms: L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)) for i = 2..N in that order, bits/dim,
      (N - 1, B) (or (N - 1,)).
    decoder_nll: L_0 = -log p(x_0 | x_1) in bits/dim, (B,) (or a scalar).
    x0: (B, ...) the data in model space; x0_predictions: (M, B, ...) eq. 15 estimates from x_t at `steps`.
    steps: (M,) distinct DDPM steps t in [1, N] of the predictions.
    data_centered: model space is [-1, 1] (else [0, 1]), for the [0, 255] scale.

  Returns:
    dict: num_steps N, and numpy arrays over the batch ordered by reverse-process time (t descending, ending
    at 0): t (M + 1,), rate (bits/dim, non-decreasing if the KL terms are >= 0) and distortion (RMSE).
  """
  kl = np.asarray(kl_terms, np.float64)
  x0, pred, steps = np.asarray(x0, np.float64), np.asarray(x0_predictions, np.float64), np.asarray(steps)
  if kl.ndim not in (1, 2) or kl.shape[0] < 1:
    raise ValueError(f"kl_terms must hold the N - 1 >= 1 terms L_1..L_(N-1) (N - 1, B), got shape {kl.shape}.")
  kl, n = kl.reshape(kl.shape[0], -1), kl.shape[0] + 1
  if pred.shape[1:] != x0.shape or steps.shape != pred.shape[:1] or pred.ndim < 2:
    raise ValueError(f"x0_predictions must be (M, *x0.shape) with one step each; got {pred.shape} for x0 "
                     f"{x0.shape} and steps of shape {steps.shape}.")
  if not (steps.size and np.all((steps >= 1) & (steps <= n) & (steps % 1 == 0))
          and np.unique(steps).size == steps.size):
    raise ValueError(f"steps must be distinct whole DDPM steps in [1, N={n}], got {steps.tolist()}.")
  order = np.argsort(-steps)
  t = steps[order].astype(np.int64)
  # tail[k] = sum of L_{i-1} over i > k + 1: the receiver of x_t has been sent prior + tail[t - 1].
  tail = np.concatenate([np.cumsum(kl[::-1], axis=0)[::-1], np.zeros_like(kl[:1])]).mean(axis=1) + np.mean(prior)
  error = (127.5 if data_centered else 255.0) * (pred[order] - x0[None])
  rmse = np.sqrt(np.mean(error.reshape(len(t), -1) ** 2, axis=1))
  return dict(num_steps=n, t=np.append(t, 0), rate=np.append(tail[t - 1], tail[0] + np.mean(decoder_nll)),
              distortion=np.append(rmse, 0.0))


def get_rate_distortion_fn(sde, score_fn, steps, data_centered=True, model_var="fixedlarge", continuous=True,
                           clip_denoised=False):
  """`curve_fn(rng, params, data) -> rate_distortion(...)` of one batch, from one evaluation of the bound
  (`vlb.get_vlb_fn` with record_steps=steps: its KL terms and the eq. 15 predictions at `steps`); the
  arguments are `vlb.get_vlb_fn`'s. Ho et al. 2020 fig. 5 is this curve over the CIFAR-10 test set."""
  from score_sde import vlb  # pylint: disable=import-outside-toplevel
  _check_ddpm(sde, "a rate-distortion curve")
  vlb_fn = vlb.get_vlb_fn(sde, score_fn, data_centered=data_centered, model_var=model_var, continuous=continuous,
                          clip_denoised=clip_denoised, record_steps=steps)

  def curve_fn(rng, params, data):
    terms = jax.device_get(vlb_fn(rng, params, _float_batch("data", data)))
    return rate_distortion(terms["prior"], terms["kl_terms"], terms["distortion"], data, terms["x0_predictions"],
                           steps, data_centered)

  return curve_fn


def plot_rate_distortion(curve, path):
  """Fig. 5's three panels (distortion and rate against reverse-process steps N - t, and distortion against
  rate) from a `rate_distortion` curve, written as a PNG to `path`. Needs matplotlib (`pip install
  matplotlib`), used without pyplot, so the caller's backend is left alone; returns path."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("plot_rate_distortion needs matplotlib: pip install matplotlib") from e
  t, rate, distortion = (np.asarray(curve[k]) for k in ("t", "rate", "distortion"))
  reverse = curve["num_steps"] - t
  fig = Figure(figsize=(12, 3.2), layout="tight")
  for ax, (xs, ys, xlabel, ylabel) in zip(fig.subplots(1, 3), [
      (reverse, distortion, "reverse process steps (N - t)", "distortion (RMSE, [0, 255])"),
      (reverse, rate, "reverse process steps (N - t)", "rate (bits/dim)"),
      (rate, distortion, "rate (bits/dim)", "distortion (RMSE, [0, 255])")]):
    ax.plot(xs, ys, marker=".")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
  fig.savefig(path, format="png")
  return path
