"""Samplers for score-based models: predictor-corrector (Song et al. 2021, §4.2, Algorithms 2-5) and the
probability-flow ODE (§4.3), both compiled end to end.

Everything here takes only `(sde, score_fn)`, with `score_fn(params, x, t, rng=None)` as in
`score_sde.models.utils`; `x` is (B, H, W, C) (any rank >= 1 works) and `t` is (B,).

Predictors and correctors are small classes in two registries. A new one is one decorated class:

    @register_predictor(name='my_predictor')
    class MyPredictor(Predictor):
      def update_fn(self, rng, params, x, t):
        ...
        return x, x_mean

and `get_pc_sampler(..., predictor='my_predictor', ...)` (or `predictor=MyPredictor`) uses it.

Whole samplers sit one level up, in a third registry read by `get_sampling_fn` (`config.sampling.method`):
'pc' and 'ode' here, 'ddim' and 'heun' in `score_sde.fast_samplers`. A new one is one decorated builder:

    @register_sampler('my_sampler')
    def my_sampler(config, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
      return jitted_fn  # sampler(rng, params, z=None) -> (samples, nfe)

Data parallelism: every builder takes `sharding=` (e.g. `parallel.batch_sharding(mesh)`); the prior draw, the
loop state and the samples are then constrained to it, so the batch is split over the devices from the first
random number on. Threefry random bits are partitionable (the jax default), so the draws, and hence the samples,
are the same as on one device; batch statistics (the Langevin corrector's norms, the ODE solver's error norm) are
means over the global batch under jit.

Counting function evaluations (NFE): each step class declares `evals_per_step` (score evaluations per call
of `update_fn`; 0 for 'none'), and the PC sampler reports N * (predictor + corrector evals per step). The 2021
code always reported N * (n_steps + 1), so an Euler-Maruyama-only P1000 run was reported as 2000 although it
evaluates the score 1000 times; here it is 1000, which is what the paper's "P1000" means. The ODE samplers
report the solver's evaluations (from diffrax's step statistics, or scipy's `nfev`); like the 2021 code,
the one extra evaluation of the optional denoising step is not included.
"""
import abc

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from score_sde import sde_lib

_PREDICTORS = {}
_CORRECTORS = {}


def _expand(v, x):
  """Broadcasts a per-example vector (B,) (or a scalar) against x (B, ...)."""
  v = jnp.asarray(v)
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _bind(score_fn, params):
  """`score(x, t)` with the parameters bound, the form `sde.reverse` expects."""
  return lambda x, t: score_fn(params, x, t)


def _discrete_index(sde, t):
  """i = floor(t (N - 1) / T): the index of the discrete chain at time t, as `sde_lib` computes it."""
  return (t * (sde.N - 1) / sde.T).astype(jnp.int32)


def constrain(x, sharding):
  """x laid out as `sharding` (None: wherever XLA puts it). A no-op on one device."""
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def initial_state(sde, rng, shape, z=None, sharding=None):
  """The sampler's start at T: z if given (checked against `shape`), else a prior draw; laid out as `sharding`.

  Constraining the draw itself (not only its consumer) makes each device generate just its own slice.
  """
  if z is None:
    return constrain(sde.prior_sampling(rng, tuple(shape)), sharding)
  z = jnp.asarray(z)
  if z.shape != tuple(shape):
    raise ValueError(f"The latent z has shape {z.shape}; this sampler was built for shape {tuple(shape)}.")
  return constrain(z, sharding)


# ------------------------------------------------------------------------------------------------ registries
def _make_register(registry, base, kind):

  def register(cls=None, *, name=None):
    def _register(c):
      if not (isinstance(c, type) and issubclass(c, base)):
        raise TypeError(f"A {kind} must be a subclass of {base.__name__}; got {c!r}.")
      key = (name if name is not None else c.__name__).lower()
      if key in registry:
        raise ValueError(f"A {kind} named {key!r} is already registered ({registry[key].__name__}).")
      c.name = key
      registry[key] = c
      return c

    return _register if cls is None else _register(cls)

  return register


def _make_getter(registry, base, key):

  def get(name):
    if isinstance(name, type) and issubclass(name, base):
      return name
    if isinstance(name, str) and name.lower() in registry:
      return registry[name.lower()]
    raise ValueError(f"{key}={name!r} is not a registered {base.__name__.lower()}; "
                     f"choose one of {sorted(registry)} (or pass a {base.__name__} subclass).")

  return get


class Predictor(abc.ABC):
  """One step of a numerical solver of the reverse-time SDE (or of the probability flow), from t to t - 1/N.

  `update_fn(rng, params, x, t) -> (x, x_mean)`: x_mean is the step without its fresh noise (the denoised
  sample when this is the last step). `t` is (B,).
  """

  evals_per_step = 1

  def __init__(self, sde, score_fn, probability_flow=False):
    self.sde = sde
    self.score_fn = score_fn
    self.probability_flow = bool(probability_flow)

  def reverse_sde(self, params):
    return self.sde.reverse(_bind(self.score_fn, params), self.probability_flow)

  @abc.abstractmethod
  def update_fn(self, rng, params, x, t):
    """Returns (x, x_mean) at the next (smaller) time."""


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


register_predictor = _make_register(_PREDICTORS, Predictor, "predictor")
register_corrector = _make_register(_CORRECTORS, Corrector, "corrector")
get_predictor = _make_getter(_PREDICTORS, Predictor, "sampling.predictor")
get_corrector = _make_getter(_CORRECTORS, Corrector, "sampling.corrector")


def registered_predictors():
  return sorted(_PREDICTORS)


def registered_correctors():
  return sorted(_CORRECTORS)


# ------------------------------------------------------------------------------------------------ predictors
@register_predictor(name="euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
  """x_mean = x + f_rev(x, t) dt, x = x_mean + g(t) sqrt(-dt) z, with dt = -1/N (as in the 2021 code)."""

  def update_fn(self, rng, params, x, t):
    dt = -1.0 / self.sde.N
    z = jax.random.normal(rng, x.shape, x.dtype)
    drift, diffusion = self.reverse_sde(params).sde(x, t)
    x_mean = x + drift * dt
    x = x_mean + _expand(diffusion, x) * np.sqrt(-dt) * z
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
    x = x_mean + _expand(g, x) * z
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
    if isinstance(sde, sde_lib.subVPSDE) or not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE)):
      raise ValueError(f"sampling.predictor='ancestral_sampling' needs a discrete Markov chain (VP: DDPM, "
                       f"VE: SMLD); {type(sde).__name__} has none. Use 'reverse_diffusion' or "
                       "'euler_maruyama' instead.")

  def update_fn(self, rng, params, x, t):
    i = _discrete_index(self.sde, t)
    score = self.score_fn(params, x, t)
    z = jax.random.normal(rng, x.shape, x.dtype)
    if isinstance(self.sde, sde_lib.VESDE):
      sigmas = jnp.asarray(self.sde.discrete_sigmas)
      sigma = sigmas[i]
      sigma_prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
      gap = sigma ** 2 - sigma_prev ** 2
      x_mean = x + _expand(gap, x) * score
      std = jnp.sqrt(sigma_prev ** 2 * gap / sigma ** 2)
    else:
      beta = jnp.asarray(self.sde.discrete_betas)[i]
      x_mean = (x + _expand(beta, x) * score) / _expand(jnp.sqrt(1.0 - beta), x)
      std = jnp.sqrt(beta)
    x = x_mean + _expand(std, x) * z
    return x, x_mean


@register_predictor(name="none")
class NonePredictor(Predictor):
  """The identity: no predictor step (corrector-only sampling, e.g. NCSN's annealed Langevin dynamics)."""

  evals_per_step = 0

  def update_fn(self, rng, params, x, t):
    return x, x


# ------------------------------------------------------------------------------------------------ correctors
def _batch_mean_norm(v):
  """Per-example L2 norms averaged over the batch. Under jit a plain mean over axis 0 is global, also for a
  batch-sharded array, so this is the whole (all-device) batch's average, as Algorithm 5 intends."""
  return jnp.mean(jnp.linalg.norm(jnp.reshape(v, (v.shape[0], -1)), axis=-1))


class _LangevinBase(Corrector):
  """x_mean = x + eps_i s(x, t), x = x_mean + sqrt(2 eps_i) z, repeated n_steps times at the same t."""

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
      step = _expand(self.step_size(x, t, grad, noise) * alpha, x)
      x_mean = x + step * grad
      x = x_mean + jnp.sqrt(2.0 * step) * noise
      return rng, x, x_mean

    _, x, x_mean = jax.lax.fori_loop(0, self.n_steps, body, (rng, x, x))
    return x, x_mean


@register_corrector(name="langevin")
class LangevinCorrector(_LangevinBase):
  """Algorithm 5: eps_i = 2 alpha_i (snr |z| / |s|)^2, norms averaged over the global batch.

  alpha_i = sde.corrector_alpha(t): the DDPM alphas for VP, 1 for VE and sub-VP.
  """

  def step_size(self, x, t, grad, noise):
    ratio = self.snr * _batch_mean_norm(noise) / _batch_mean_norm(grad)
    return 2.0 * ratio ** 2 * jnp.ones_like(t)


@register_corrector(name="ald")
class AnnealedLangevinDynamics(_LangevinBase):
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


# ------------------------------------------------------------------------------------------------ PC sampler
def get_pc_sampler(sde, score_fn, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, continuous=True, denoise=True, eps=1e-3, sharding=None):
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
      loop state and the samples (see the module docstring).

  Returns:
    A jit-compiled `sampler(rng, params, z=None) -> (samples, nfe)`; z, if given, replaces the prior
    sample at T (e.g. to compare with the ODE sampler from the same latent). nfe counts score evaluations:
    N * (predictor.evals_per_step + corrector.evals_per_step) (see the module docstring).
  """
  del continuous
  predictor_obj = get_predictor(predictor)(sde, score_fn, probability_flow)
  corrector_obj = get_corrector(corrector)(sde, score_fn, snr, n_steps)
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


# ------------------------------------------------------------------------------------------------ ODE sampler
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
# First-same-as-last tableaus reuse the last stage of an accepted step, so they pay one evaluation up front
# and (stages - 1) per attempt (rejected attempts included); the counts are checked against an explicit
# evaluation counter in tests/test_sampling.py.
_ODE_METHODS = {
    "rk45": (RK45, 6, 1),
    "dopri5": (diffrax.Dopri5, 6, 1),
    "tsit5": (diffrax.Tsit5, 6, 1),
    "bosh3": (diffrax.Bosh3, 3, 1),
    "heun": (diffrax.Heun, 2, 0),
    "dopri8": (diffrax.Dopri8, 13, 1),
}
_SCIPY_METHOD = "scipy_rk45"


def ode_methods():
  """Names accepted by `get_ode_sampler(method=...)`."""
  return sorted(_ODE_METHODS) + [_SCIPY_METHOD]


def _ode_method(method):
  key = str(method).lower()
  if key not in _ODE_METHODS:
    raise ValueError(f"ODE method {method!r} is not one of {ode_methods()}.")
  return _ODE_METHODS[key]


def _flow_drift(sde, score_fn, params, x, t):
  """The probability-flow ODE's dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 at a scalar time t."""
  vec_t = jnp.full((x.shape[0],), t, dtype=x.dtype)
  return sde.reverse(_bind(score_fn, params), probability_flow=True).sde(x, vec_t)[0]


def denoise_step(sde, score_fn, params, x, eps):
  """One reverse-diffusion predictor step at eps, keeping only its mean (the 2021 ODE sampler's denoiser)."""
  t = jnp.full((x.shape[0],), eps, dtype=x.dtype)
  f, _ = sde.reverse(_bind(score_fn, params), probability_flow=False).discretize(x, t)
  return x - f


def _solve_flow(sde, score_fn, params, x, t0, t1, rtol, atol, method, max_steps, sharding=None):
  """Integrates the probability flow from t0 to t1 (either direction) inside jit. Returns (x(t1), nfe)."""
  solver_cls, evals_per_step, init_evals = _ode_method(method)
  term = diffrax.ODETerm(lambda t, y, p: _flow_drift(sde, score_fn, p, constrain(y, sharding), t))
  # An explicit first step (1% of the interval, what diffrax 0.7 picks itself for reversed time) keeps the NFE
  # formula exact: with dt0=None diffrax would spend two uncounted evaluations choosing one.
  sol = diffrax.diffeqsolve(
      term, solver_cls(), t0=t0, t1=t1, dt0=0.01 * (t1 - t0), y0=x, args=params,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  nfe = init_evals + evals_per_step * sol.stats["num_steps"]
  return sol.ys[-1], nfe


def get_ode_sampler(sde, score_fn, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5,
                    method="rk45", eps=1e-3, max_steps=16384, sharding=None):
  """Samples by integrating the probability-flow ODE (eq. 13) from T to eps with an adaptive solver.

  The whole solve runs inside one jit (diffrax), with no host round trip per evaluation. The default 'rk45' is
  the 2021 code's scipy RK45 (Dormand-Prince 5(4) with the same error estimate, see `RK45`), so its NFE are
  comparable; 'dopri5' is diffrax's variant, ~17% fewer evaluations at the same tolerances. method='scipy_rk45'
  instead returns the slow, host-bound `get_ode_sampler_scipy` cross-check.

  Returns:
    `sampler(rng, params, z=None) -> (samples, nfe)`: z, if given, is the latent at T (shape `shape`);
    otherwise it is drawn from the prior with rng. nfe is the solver's number of score evaluations. The
    whole batch is one ODE (one step size, RMS error norm over all of it, as in the 2021 code); a solve
    needing more than max_steps steps raises an error instead of returning a truncated sample. With
    `sharding`, the batch is split over its devices (see the module docstring); the error norm stays global.
  """
  if str(method).lower() == _SCIPY_METHOD:
    if sharding is not None:
      raise ValueError("method='scipy_rk45' runs on the host and cannot shard the batch; use 'rk45'.")
    return get_ode_sampler_scipy(sde, score_fn, shape, inverse_scaler, denoise=denoise, rtol=rtol,
                                 atol=atol, eps=eps)
  _ode_method(method)  # fail fast on an unknown name

  def sampler(rng, params, z=None):
    x = initial_state(sde, rng, shape, z, sharding)
    x, nfe = _solve_flow(sde, score_fn, params, x, sde.T, eps, rtol, atol, method, max_steps, sharding)
    if denoise:
      x = denoise_step(sde, score_fn, params, x, eps)
    return constrain(inverse_scaler(x), sharding), nfe

  return jax.jit(sampler)


def get_ode_encoder(sde, score_fn, rtol=1e-5, atol=1e-5, method="rk45", eps=1e-3, max_steps=16384):
  """The inverse of the ODE sampler (without denoising): data x (model space, i.e. after the scaler) at eps
  to its latent at T, by integrating the probability flow forwards (the paper's §4.3 encoding).

  Returns a jit-compiled `encode(params, x) -> (z, nfe)`.
  """
  _ode_method(method)

  def encode(params, x):
    return _solve_flow(sde, score_fn, params, x, eps, sde.T, rtol, atol, method, max_steps)

  return jax.jit(encode)


def get_ode_sampler_scipy(sde, score_fn, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5,
                          eps=1e-3):
  """The 2021 code's ODE sampler: scipy `solve_ivp(method='RK45')` on the host, in float64, calling a
  jitted drift once per evaluation. Slow and host-bound (one device round trip per evaluation): kept as a
  cross-check of the in-jit solver. Returns `sampler(rng, params, z=None) -> (samples, nfe)`, nfe = nfev.
  """
  drift_fn = jax.jit(lambda params, x, t: _flow_drift(sde, score_fn, params, x, t))
  denoise_fn = jax.jit(lambda params, x: denoise_step(sde, score_fn, params, x, eps))
  prior_fn = jax.jit(lambda rng: sde.prior_sampling(rng, shape))

  def sampler(rng, params, z=None):
    x = prior_fn(rng) if z is None else jnp.asarray(z)

    def fun(t, y):
      x_t = jnp.asarray(y.reshape(shape), jnp.float32)
      return np.asarray(drift_fn(params, x_t, t), np.float64).reshape(-1)

    solution = integrate.solve_ivp(fun, (sde.T, eps), np.asarray(x, np.float64).reshape(-1), rtol=rtol,
                                   atol=atol, method="RK45")
    x = jnp.asarray(solution.y[:, -1].reshape(shape), jnp.float32)
    if denoise:
      x = denoise_fn(params, x)
    return inverse_scaler(x), int(solution.nfev)

  return sampler


# ------------------------------------------------------------------------------------------------ from config
_SAMPLERS = {}


_FLOW_SAMPLERS = set()


def register_sampler(name, probability_flow=False):
  """Decorator registering a sampler builder under `config.sampling.method == name`.

  The builder is `build(config, sde, score_fn, shape, inverse_scaler, eps, sharding=None)` and returns a
  jit-compiled `sampler(rng, params, z=None) -> (samples, nfe)`. Optional config keys are read with defaults
  (getattr), so old configs keep working. probability_flow=True marks a sampler that integrates the
  probability-flow ODE: its score is built with `get_score_fn(..., probability_flow=True)`
  (see `uses_probability_flow`).
  """

  def _register(builder):
    key = str(name).lower()
    if key in _SAMPLERS:
      raise ValueError(f"A sampler named {key!r} is already registered ({_SAMPLERS[key].__name__}).")
    _SAMPLERS[key] = builder
    if probability_flow:
      _FLOW_SAMPLERS.add(key)
    return builder

  return _register


def uses_probability_flow(config):
  """Whether `config.sampling.method` integrates the probability flow (the ODE and Heun samplers): such a
  sampler reads a discrete DDPM model with the continuous convention, as the 2021 ODE sampler did
  (`models.utils.get_score_fn`'s probability_flow). The PC sampler keeps the training convention, even with
  sampling.probability_flow=True (its reverse-diffusion predictor on the flow), as in 2021."""
  registered_samplers()
  return str(config.sampling.method).lower() in _FLOW_SAMPLERS


def _import_all_samplers():
  # Importing the module runs its @register_sampler decorators (it imports this one, hence not at the top).
  from score_sde import fast_samplers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def registered_samplers():
  _import_all_samplers()
  return sorted(_SAMPLERS)


@register_sampler("pc")
def _pc_from_config(config, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """Reads sampling.{predictor, corrector, snr, n_steps_each, probability_flow, noise_removal}."""
  return get_pc_sampler(sde, score_fn, shape, config.sampling.predictor, config.sampling.corrector,
                        inverse_scaler, snr=config.sampling.snr, n_steps=config.sampling.n_steps_each,
                        probability_flow=config.sampling.probability_flow,
                        continuous=config.training.continuous, denoise=config.sampling.noise_removal,
                        eps=eps, sharding=sharding)


@register_sampler("ode", probability_flow=True)
def _ode_from_config(config, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """Reads sampling.noise_removal and the optional sampling.{ode_method, ode_rtol, ode_atol}
  (defaults rk45, 1e-5, 1e-5)."""
  return get_ode_sampler(sde, score_fn, shape, inverse_scaler, denoise=config.sampling.noise_removal,
                         rtol=getattr(config.sampling, "ode_rtol", 1e-5),
                         atol=getattr(config.sampling, "ode_atol", 1e-5),
                         method=getattr(config.sampling, "ode_method", "rk45"), eps=eps, sharding=sharding)


def get_sampling_fn(config, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """The sampler registered under `config.sampling.method` ('pc', 'ode', 'ddim', 'heun', ...).

  Each builder documents the config keys it reads. `sharding` (optional) splits the batch over devices.
  Returns a jit-compiled `sampler(rng, params, z=None) -> (samples, nfe)`.
  """
  method = str(config.sampling.method).lower()
  names = registered_samplers()
  if method not in _SAMPLERS:
    raise ValueError(f"sampling.method={config.sampling.method!r} is not a registered sampler; choose one of "
                     f"{names}.")
  return _SAMPLERS[method](config, sde, score_fn, shape, inverse_scaler, eps, sharding=sharding)
