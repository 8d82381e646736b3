"""Model registry and the one boundary between a network and a score: `get_score_fn`.

A score function is `score_fn(params, x, t, rng=None) -> score` with `x` of shape (B, H, W, C) and `t` of
shape (B,). `params` is the network's parameter pytree (the `'params'` collection), or anything else a
closed-form score wants (e.g. None). Loss, samplers, likelihood and controllable generation take only
`(sde, score_fn)`.
"""
import jax
import jax.numpy as jnp
import numpy as np

_MODELS = {}


def register_model(cls=None, *, name=None):
  """Class decorator: `@register_model(name='ncsnpp')`. The class needs `from_config(config)`."""

  def _register(c):
    key = name if name is not None else c.__name__
    if key in _MODELS:
      raise ValueError(f"A model named {key!r} is already registered ({_MODELS[key].__name__}).")
    if not hasattr(c, "from_config"):
      raise TypeError(f"Model {c.__name__} must define a classmethod from_config(config).")
    _MODELS[key] = c
    return c

  return _register if cls is None else _register(cls)


def get_model_class(name):
  _import_all_models()
  if name not in _MODELS:
    raise ValueError(f"config.model.name={name!r} is not a registered model; choose one of {sorted(_MODELS)}.")
  return _MODELS[name]


def registered_models():
  _import_all_models()
  return sorted(_MODELS)


def _import_all_models():
  # Importing the modules runs their @register_model decorators.
  from score_sde.models import ddpm, ncsn, ncsnpp, ncsnv2  # noqa: F401  pylint: disable=g-import-not-at-top


def create_model(config):
  """The flax.linen.Module named by `config.model.name`, with its fields taken from the config."""
  return get_model_class(config.model.name).from_config(config)


def get_sigmas(sigma_min, sigma_max, num_scales):
  """The SMLD noise levels, **descending** (index 0 = sigma_max), as discrete VE labels index them."""
  return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)).astype(np.float32)


def init_params(model, rng, shape, label_dtype=jnp.float32):
  """Initial parameters for inputs of `shape` (B, H, W, C); returns the `'params'` collection."""
  x = jnp.zeros(shape, jnp.float32)
  labels = jnp.zeros(shape[:1], label_dtype)
  variables = model.init({"params": rng, "dropout": rng}, x, labels, train=False)
  return variables["params"]


# Initialisers run once: compiling them without LLVM optimisations is much faster on CPU (threefry expands
# into many ops per parameter) and costs nothing that matters.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def compile_once(fn, *args, out_shardings=None):
  """Runs `fn(*args)` jit-compiled with FAST_COMPILE_OPTIONS: for one-off work such as initialisation."""
  jitted = jax.jit(fn, out_shardings=out_shardings)
  return jitted.lower(*args).compile(compiler_options=FAST_COMPILE_OPTIONS)(*args)


def get_model_fn(model, train=False):
  """`model_fn(params, x, labels, rng=None)`: the raw network output. `rng` feeds dropout when training."""

  def model_fn(params, x, labels, rng=None):
    rngs = {"dropout": rng} if (train and rng is not None) else {}
    return model.apply({"params": params}, x, labels, train=train, rngs=rngs)

  return model_fn


def get_score_fn(sde, model, train=False, continuous=False, probability_flow=False):
  """Wraps a network into `score_fn(params, x, t, rng=None)` with the 2021 label/std conventions.

  The convention is the SDE's: `sde.parameterization(continuous, probability_flow)` (score_sde.parameterization)
  gives the network's labels for t and turns its output into a score. For the SDEs of sde_lib:

  VP / sub-VP: the network predicts noise; score = -net / std. Labels are 999 t when continuous (always for
  sub-VP), else t (N - 1) with std from the discrete DDPM chain.
  VE: the network output is the score. Labels are sigma(t) when continuous, else the index
  round((T - t)(N - 1)) into the descending sigma list.

  probability_flow=True gives the score the probability-flow paths read (the ODE sampler and its denoising
  step, the Heun sampler, likelihoods, encoders). The 2021 code built those with `continuous=True` whatever
  the training (its likelihood.py and sampling.get_ode_sampler), so a discrete DDPM model is read there with
  the continuous VP convention: label 999 t and the marginal std sqrt(1 - exp(2 lmc(t))) of the VP
  perturbation kernel (Song et al. 2021, App. B), smooth in t, in place of the chain's piecewise-constant
  sqrt(1 - abar_i). That is how the paper's "DDPM (VP)" NLL (Table 2) was measured, and it is what adaptive
  solvers need: a score that jumps at N - 1 times costs many rejected steps and biases the divergence integral.
  Discrete VE (SMLD) models keep their index labels on these paths: their networks read the label as an
  index into the sigma table (NCSN / NCSNv2 gather sigmas[label], discrete NCSN++ scales by it), so the
  continuous label sigma(t) would be read as an index (in 2021 an out-of-range gather: wrong scores, or an
  error). Their flow is then driven by a score that is piecewise constant in t, the model they were
  trained as; probability-flow numbers of SMLD models are comparable only with that in mind.
  """
  parameterization = sde.parameterization(continuous, probability_flow=probability_flow)
  model_fn = get_model_fn(model, train=train)

  def score_fn(params, x, t, rng=None):
    out = model_fn(params, x, parameterization.labels(t), rng)
    return parameterization.to_score(out, x, t)

  return score_fn


def label_dtype(sde, continuous):
  """The dtype of the time labels `get_score_fn(sde, ..., continuous)` feeds the network (e.g. for init)."""
  return sde.parameterization(continuous).label_dtype


def count_params(params):
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
