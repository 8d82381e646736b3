"""The sampler registry: `config.sampling.method` -> a compiled sampler (`get_sampling_fn`).

Every sampler takes only `(sde, score_fn)`, with `score_fn(params, x, t, rng=None)` as in
`score_sde.models.utils`; `x` is (B, H, W, C) (any rank >= 1 works) and `t` is (B,). The samplers live in
their own modules, one idea each:

- `pc_sampler`: predictor-corrector (Song et al. 2021, §4.2), 'pc'; its steps are the registered classes of
  `predictors` and `correctors`.
- `ode_sampler`: the probability-flow ODE (§4.3), 'ode'; the flow itself, its solvers, the denoising step and
  the encoder are `flow`'s, shared with `likelihood`.
- `fast_samplers`: DDIM and Heun's method on the flow, 'ddim' and 'heun'.
- `sampler_utils`: the pieces they share (`initial_state`, `constrain`, ...).

A new sampler is one decorated builder, in any module listed in `_import_all_samplers` below (or any module the
caller has imported):

    from score_sde import sampling

    @sampling.register_sampler('my_sampler')
    def my_sampler(s, sde, score_fn, shape, inverse_scaler, eps, sharding=None):  # s: SamplingSettings
      return jitted_fn  # sampler(rng, params, z=None) -> (samples, nfe)

Members import this module for the decorator; this module imports its members only inside
`_import_all_samplers`, so there is no import cycle. The samplers' main public names stay reachable here too
(`sampling.get_pc_sampler`, `sampling.get_ode_sampler`, `sampling.register_predictor`, ...: see `_FACADE`).

Data parallelism: every builder takes `sharding=` (e.g. `parallel.batch_sharding(mesh)`); the prior draw, the
loop state and the samples are then constrained to it, so the batch is split over the devices from the first
random number on. Threefry random bits are partitionable (the jax default), so the draws, and hence the samples,
are the same as on one device; batch statistics (the Langevin corrector's norms, the ODE solver's error norm) are
means over the global batch under jit.

Counting function evaluations (NFE): every sampler returns its number of score evaluations; each module states
its convention (the PC sampler counts its steps' `evals_per_step`, the ODE sampler the solver's evaluations
without the optional denoising step, as the 2021 code did; DDIM and Heun count every evaluation).
"""
from score_sde import settings

_SAMPLERS = {}
_FLOW_SAMPLERS = set()


def register_sampler(name, probability_flow=False):
  """Decorator registering a sampler builder under `config.sampling.method == name`.

  The builder is `build(s, sde, score_fn, shape, inverse_scaler, eps, sharding=None)`, `s` the run's
  `settings.SamplingSettings` (typed, defaults filled in), and returns a jit-compiled
  `sampler(rng, params, z=None) -> (samples, nfe)`. probability_flow=True marks a sampler that integrates the
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


def _import_all_samplers():
  """The one place the sampler modules are imported: importing one runs its @register_sampler decorators
  (they import this module, hence not at the top). Returns them by name, for the façade below."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from score_sde import correctors, fast_samplers, flow, ode_sampler, pc_sampler, predictors, sampler_utils
  return dict(correctors=correctors, fast_samplers=fast_samplers, flow=flow, ode_sampler=ode_sampler,
              pc_sampler=pc_sampler, predictors=predictors, sampler_utils=sampler_utils)


# The façade: these public names of the sampler modules are also reachable as `sampling.<name>`, resolved on
# first use (the modules import this one, so it cannot import them at the top). New code may import either.
_FACADE = {
    "pc_sampler": ("get_pc_sampler",),
    "predictors": ("Predictor", "register_predictor", "get_predictor", "registered_predictors"),
    "correctors": ("Corrector", "register_corrector", "get_corrector", "registered_correctors"),
    "ode_sampler": ("get_ode_sampler", "get_ode_sampler_scipy"),
    "flow": ("ode_methods", "denoise_step", "get_ode_encoder", "RK45"),
    "sampler_utils": ("initial_state", "constrain"),
}
_FACADE_NAMES = {name: module for module, names in _FACADE.items() for name in names}


def __getattr__(name):
  if name in _FACADE_NAMES:
    return getattr(_import_all_samplers()[_FACADE_NAMES[name]], name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_FACADE_NAMES))


def registered_samplers():
  """The names `config.sampling.method` accepts, sorted."""
  _import_all_samplers()
  return sorted(_SAMPLERS)


def uses_probability_flow(config):
  """Whether `config.sampling.method` integrates the probability flow (the ODE and Heun samplers): such a
  sampler reads a discrete DDPM model with the continuous convention, as the 2021 ODE sampler did
  (`models.utils.get_score_fn`'s probability_flow). The PC sampler keeps the training convention, even with
  sampling.probability_flow=True (its reverse-diffusion predictor on the flow), as in 2021."""
  _import_all_samplers()
  return settings.SamplingSettings.from_config(config).method in _FLOW_SAMPLERS


def get_sampling_fn(config, sde, score_fn, shape, inverse_scaler, eps, sharding=None):
  """The sampler registered under `config.sampling.method` ('pc', 'ode', 'ddim', 'heun', ...).

  `config.sampling` becomes `settings.SamplingSettings` here, once; each builder documents the fields it reads.
  `sharding` (optional) splits the batch over devices. Returns a jit-compiled
  `sampler(rng, params, z=None) -> (samples, nfe)`.
  """
  s = settings.SamplingSettings.from_config(config)
  names = registered_samplers()
  if s.method not in _SAMPLERS:
    raise ValueError(f"sampling.method={config.sampling.method!r} is not a registered sampler; choose one of "
                     f"{names}.")
  return _SAMPLERS[s.method](s, sde, score_fn, shape, inverse_scaler, eps, sharding=sharding)
