"""The DDPM variational bound (Ho et al. 2020, eq. 5) in bits/dim, for VP models.

With the discrete chain q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I), i = 1..N (the VP SDE's
`discrete_betas`), the negative log-likelihood of discrete data x_0 is bounded by

  L = L_N + sum_{i=2..N} L_{i-1} + L_0,
  L_N     = KL(q(x_N | x_0) || N(0, I))                       (the prior term, no parameters),
  L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i))     (eq. 6-7: both Gaussian, closed form),
  L_0     = -log p(x_0 | x_1)                                  (the discretised Gaussian decoder, eq. 13).

p(x_{i-1} | x_i) = N(mu(x_i, i), sigma_i^2 I) with mu from the noise prediction (eq. 11),
mu = (x_i - beta_i / sqrt(1 - abar_i) eps_hat) / sqrt(alpha_i), and eps_hat = -sqrt(1 - abar_i) * score,
so any score model (continuous or discrete time) can be evaluated. sigma_i^2 is beta_i ('fixedlarge') or
the posterior variance beta~_i = (1 - abar_{i-1}) beta_i / (1 - abar_i) ('fixedsmall'). beta~_1 = 0, so,
as in the DDPM code, step 1 (the decoder's variance) takes beta~_2 under both choices.

Reported, each in bits/dim and per example: `prior` = L_N; `rate` = L_N + sum_{i=2..N} L_{i-1} (everything
but the decoder: the bits needed to transmit x_1, as in the DDPM paper's rate-distortion table);
`distortion` = L_0; `bpd` = rate + distortion. Each KL term (and L_0) uses its own draw x_i ~ q(x_i | x_0),
a single-sample estimate of the expectation over x_i; L_N is exact.

Clipping (`clip_denoised`, default True). As in the DDPM code (hojonathanho/diffusion,
diffusion_tf/diffusion_utils_2.py: `GaussianDiffusion2.calc_bpd_loop(..., clip_denoised=True)` ->
`_vb_terms_bpd` -> `p_mean_variance`, the evaluation behind the paper's 3.70/3.75 bits/dim), the model mean
is formed from the network's x_0 prediction x0_hat = (x_i - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i),
clipped to the data range, mu = coef_x0 clip(x0_hat) + coef_xt x_i (the posterior mean, eq. 7, of the
clipped prediction). The clip applies at every step i = 1..N: in every KL term and in the decoder, where
coef_x0 = 1 and coef_xt = 0 (abar_0 = 1), so the decoder mean is clip(x0_hat) itself. The data range is the
model-space one: [-1, 1] for centred data (the DDPM code's only case), [0, 1] otherwise. Only training (the
'kl' loss) runs with clip_denoised=False there. Without the clip, mu is eq. 11 exactly as above (the
unclipped bound).

Time labels. Step i (1-based) is evaluated at the time t_i the score model associates with abar_i:
  * continuous=True: the VP marginal's closed form abar(t) = exp(-t^2 (b1 - b0) / 2 - t b0) is inverted
    at abar(t_i) = alphas_cumprod[i - 1], so the network sees the noise level it was trained on. The
    chain's discrete noise runs a little past the SDE's (sum -log(1 - beta_i) > int beta), so the last few
    t_i exceed T (t_N = 1.003 for the default N = 1000; more for short chains); they are kept, not clipped,
    because a clipped time would pair x_i with a wrong noise level;
  * continuous=False (DDPM-style discrete models, `get_score_fn(..., continuous=False)`): the label is
    t (N - 1), truncated to an index; t_i is the float32 nearest (i - 1) / (N - 1) whose float32 product
    t_i (N - 1) is not below i - 1, so the label is i - 1 up to float32 rounding (at most an ulp above it)
    and truncates to exactly i - 1, never to the step below (a plain (i - 1) / (N - 1) does for some N).
"""
import jax
import jax.numpy as jnp
import numpy as np


MODEL_VARS = ("fixedlarge", "fixedsmall")
NUM_BINS = 256  # 8-bit pixels


def _sum_except_batch(v):
  return jnp.sum(v, axis=tuple(range(1, v.ndim)))


# ------------------------------------------------------------------------------------------------ Gaussians
def normal_kl(mean1, var1, mean2, var2):
  """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats."""
  return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _log_normal_mass(lo, hi):
  """log(Phi(hi) - Phi(lo)) for lo < hi (either may be infinite), accurate in both tails.

  An interval centred above 0 is reflected, Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), so both cdfs are taken
  on the lower side, where their logs are accurate even far out (log_ndtr); the difference is formed from
  those logs and never cancels to 0 in float32 as 1 - 1 would in the upper tail.
  """
  flip = lo + hi > 0
  lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
  log_hi = jax.scipy.special.log_ndtr(hi)
  log_lo = jax.scipy.special.log_ndtr(lo)
  return log_hi + jnp.log1p(-jnp.exp(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x, mean, std, low=-1.0, high=1.0, num_bins=NUM_BINS):
  """log P(x) per element under N(mean, std^2) discretised to num_bins bins on [low, high] (DDPM eq. 13).

  The bins are centred on the pixel grid low + k (high - low) / (num_bins - 1) with that width; the first
  bin extends to -inf and the last to +inf. x should lie on the grid (a value nearest an end grid point
  counts as that end bin).
  """
  half = 0.5 * (high - low) / (num_bins - 1)
  lo = jnp.where(x < low + half, -jnp.inf, (x - half - mean) / std)
  hi = jnp.where(x > high - half, jnp.inf, (x + half - mean) / std)
  return _log_normal_mass(lo, hi)


# ------------------------------------------------------------------------------------------------ chain
def _check_vp(sde):
  if sde.discrete_chain != "ddpm":
    raise ValueError(f"The DDPM variational bound needs the VP SDE's discrete chain; {type(sde).__name__} has "
                     "none. Use likelihood.get_likelihood_fn (probability-flow bits/dim) instead.")


def chain_constants(sde, model_var="fixedlarge"):
  """Per-step constants of the DDPM chain (0-based index j = i - 1), float64 numpy arrays of length N.

  Keys: betas, alphas, abar (cumulative product), one_m_abar (1 - abar without cancellation), abar_prev
  (abar_{i-1}, 1 at i = 1), post_var (beta~_i), coef_x0 and coef_xt (the posterior mean
  mu~ = coef_x0 x_0 + coef_xt x_i, eq. 7), model_var (sigma_i^2).
  """
  _check_vp(sde)
  key = str(model_var).lower()
  if key not in MODEL_VARS:
    raise ValueError(f"model_var={model_var!r} is not one of {list(MODEL_VARS)}.")
  if sde.N < 2:
    raise ValueError(f"The DDPM variational bound needs a chain of at least 2 steps; model.num_scales={sde.N}.")
  betas = np.asarray(sde.discrete_betas, np.float64)
  log_abar = np.cumsum(np.log1p(-betas))
  abar = np.exp(log_abar)
  one_m_abar = -np.expm1(log_abar)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  one_m_abar_prev = np.concatenate([[0.0], one_m_abar[:-1]])
  post_var = betas * one_m_abar_prev / one_m_abar
  # beta~_1 = 0 would make p(x_0 | x_1) degenerate: the decoder takes beta~_2, as the DDPM code does.
  variances = (betas if key == "fixedlarge" else post_var).copy()
  variances[0] = post_var[1]
  return dict(betas=betas, alphas=1.0 - betas, abar=abar, one_m_abar=one_m_abar, abar_prev=abar_prev,
              post_var=post_var, coef_x0=np.sqrt(abar_prev) * betas / one_m_abar,
              coef_xt=np.sqrt(1.0 - betas) * one_m_abar_prev / one_m_abar, model_var=variances)


def step_times(sde, continuous=True):
  """t_i for steps i = 1..N (0-based array), as the score model must see them (module docstring)."""
  _check_vp(sde)
  if continuous:
    # Solve a t^2 + b t + c = 0 for the VP's -log abar(t) / 2 = a t^2 + b t; c = log(abar_i) / 2 < 0.
    # The form -2c / (b + sqrt(b^2 - 4ac)) has no cancellation and also holds for a = 0.
    a, b = 0.25 * (sde.beta_1 - sde.beta_0), 0.5 * sde.beta_0
    c = 0.5 * np.cumsum(np.log1p(-np.asarray(sde.discrete_betas, np.float64)))
    return (-2.0 * c / (b + np.sqrt(b * b - 4.0 * a * c))).astype(np.float32)
  index = np.arange(sde.N, dtype=np.float32)
  scale = np.float32(sde.N - 1)
  times = (np.arange(sde.N) / (sde.N - 1)).astype(np.float32)
  # float32(t (N - 1)) can round to just below the index and truncate to the step before; step such t up
  # one ulp at a time (one step suffices in practice) until the product is >= the index.
  for _ in range(4):
    short = (times * scale).astype(np.float32) < index
    times = np.where(short, np.nextafter(times, np.float32(np.inf)), times).astype(np.float32)
  labels = (times * scale).astype(np.float32)
  if np.any(np.floor(labels) != index):
    raise AssertionError("Could not place discrete time labels on their indices.")  # cannot happen
  return times


def get_vlb_fn(sde, score_fn, data_centered=True, model_var="fixedlarge", continuous=True, clip_denoised=True,
               record_steps=None):
  """The DDPM variational bound (eq. 5) in bits/dim for a VP score model.

  Args:
    sde: a `sde_lib.VPSDE` (not sub-VP or VE: they have no DDPM chain); its N and discrete betas define the
      chain.
    score_fn: `score_fn(params, x, t, rng=None)`.
    data_centered: data in model space lies in [-1, 1] (bins of width 2/255) if True, else in [0, 1]
      (width 1/255), i.e. `config.data.centered`.
    model_var: 'fixedlarge' (sigma_i^2 = beta_i) or 'fixedsmall' (beta~_i); see the module docstring.
    continuous: how score_fn reads time (`config.training.continuous`); sets the time labels.
    clip_denoised: clip the x_0 prediction to the data range ([-1, 1] or [0, 1]) before forming the model
      mean, at every step including the decoder, as the DDPM code's bits/dim evaluation does
      (`calc_bpd_loop(clip_denoised=True)`, see the module docstring); False gives the unclipped bound
      (eq. 11 means).
    record_steps: optional distinct DDPM steps t in [1, N]; the result then also holds every KL term and the
      x_0 predictions (eq. 15, clipped as the means are) at those steps, for rate-distortion curves (Ho et al.
      2020, fig. 5; `latents.get_rate_distortion_fn`).

  Returns:
    A jit-compiled `vlb_fn(rng, params, data) -> dict(bpd, rate, distortion, prior)` (each (B,), bits/dim),
    plus `kl_terms` ((N - 1, B), L_{i-1} for i = 2..N, bits/dim) and `x0_predictions` ((M, B, H, W, C), in the
    order of record_steps) when record_steps is given.
    data: (B, H, W, C) in model space, the discrete pixel values (not dequantised). The N - 1 KL terms run
    sequentially in one `lax.scan`, one score evaluation of batch size B each.
  """
  consts = chain_constants(sde, model_var)
  times = step_times(sde, continuous)
  slots = None
  if record_steps is not None:
    steps = np.asarray(record_steps)
    if (steps.ndim != 1 or not steps.size or np.any(steps % 1) or steps.min() < 1 or steps.max() > sde.N
        or np.unique(steps).size != steps.size):
      raise ValueError(f"record_steps must be distinct whole DDPM steps in [1, N={sde.N}], got {steps.tolist()}.")
    slots = np.full(sde.N, -1, np.int32)  # 0-based step j -> its place among the recorded predictions
    slots[steps.astype(np.int64) - 1] = np.arange(steps.size)
  low, high = (-1.0, 1.0) if data_centered else (0.0, 1.0)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  sqrt_abar, sqrt_1m_abar = f32(np.sqrt(consts["abar"])), f32(np.sqrt(consts["one_m_abar"]))
  betas, sqrt_alphas = f32(consts["betas"]), f32(np.sqrt(consts["alphas"]))
  coef_x0, coef_xt = f32(consts["coef_x0"]), f32(consts["coef_xt"])
  post_var, variances = f32(consts["post_var"]), f32(consts["model_var"])
  times = f32(times)
  # L_N per pixel is (abar_N x_0^2 + c) / 2 with c = (1 - abar_N) - 1 - log(1 - abar_N) = abar_N^2 / 2 + ...;
  # c is formed in float64: in float32 its terms cancel to rounding noise.
  abar_last = consts["abar"][-1]
  prior_const = float(-abar_last - np.log1p(-abar_last))

  def sample_and_predict(rng, params, x0, j):
    """x_i ~ q(x_i | x_0) (eq. 4) and the model mean mu(x_i, i) (eq. 11, or from the clipped x_0 prediction),
    for 0-based step j = i - 1."""
    x_t = sqrt_abar[j] * x0 + sqrt_1m_abar[j] * jax.random.normal(rng, x0.shape, x0.dtype)
    t = jnp.full(x0.shape[:1], times[j], x0.dtype)
    eps_hat = -sqrt_1m_abar[j] * score_fn(params, x_t, t)
    x0_hat = (x_t - sqrt_1m_abar[j] * eps_hat) / sqrt_abar[j]  # eq. 15
    if clip_denoised:
      x0_hat = jnp.clip(x0_hat, low, high)
      mean = coef_x0[j] * x0_hat + coef_xt[j] * x_t
    else:
      mean = (x_t - betas[j] / sqrt_1m_abar[j] * eps_hat) / sqrt_alphas[j]
    return x_t, mean, x0_hat

  def vlb_fn(rng, params, data):
    x0 = jnp.asarray(data)
    if not jnp.issubdtype(x0.dtype, jnp.floating) or x0.ndim < 2:
      raise ValueError(f"data must be a float batch (B, H, W, C) of pixel values in model space (after the "
                       f"data scaler, not dequantised), got {x0.dtype} of shape {x0.shape}.")
    dims = np.prod(x0.shape[1:])
    to_bits = lambda nats: nats / (dims * np.log(2.0))

    # L_N: KL(N(sqrt(abar_N) x_0, 1 - abar_N) || N(0, 1)) per pixel, exact.
    prior = 0.5 * _sum_except_batch(abar_last * x0 ** 2 + prior_const)

    def record(predictions, j, x0_hat):
      if slots is None:
        return predictions
      slot = jnp.asarray(slots)[j]
      return jax.lax.cond(slot >= 0, lambda p: p.at[slot].set(x0_hat), lambda p: p, predictions)

    def kl_term(carry, j):
      total, predictions = carry
      x_t, mean, x0_hat = sample_and_predict(jax.random.fold_in(rng, j), params, x0, j)
      post_mean = coef_x0[j] * x0 + coef_xt[j] * x_t
      kl = _sum_except_batch(normal_kl(post_mean, post_var[j], mean, variances[j]))
      return (total + kl, record(predictions, j, x0_hat)), (kl if slots is not None else None)

    empty = jnp.zeros((0 if slots is None else int(steps.size),) + x0.shape, x0.dtype)
    (kl_sum, predictions), kl_terms = jax.lax.scan(kl_term, (jnp.zeros(x0.shape[:1], x0.dtype), empty),
                                                   jnp.arange(1, sde.N))

    # L_0 = -log p(x_0 | x_1) with the discretised Gaussian decoder (eq. 13).
    _, mean, x0_hat = sample_and_predict(jax.random.fold_in(rng, 0), params, x0, 0)
    log_p = discretized_gaussian_log_likelihood(x0, mean, jnp.sqrt(variances[0]), low, high)
    distortion = to_bits(-_sum_except_batch(log_p))
    rate = to_bits(prior + kl_sum)
    out = dict(bpd=rate + distortion, rate=rate, distortion=distortion, prior=to_bits(prior))
    if slots is not None:
      out.update(kl_terms=to_bits(kl_terms), x0_predictions=record(predictions, 0, x0_hat))
    return out

  return jax.jit(vlb_fn)
