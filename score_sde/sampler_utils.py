"""Small pieces every sampler shares: the batch layout, the start at T, broadcasting, binding parameters, and
the class registries behind the predictors and correctors.

Nothing here knows a particular sampler, so each sampler module imports this one and none of its siblings'
internals.
"""
import jax
import jax.numpy as jnp


def expand(v, x):
  """Broadcasts a per-example vector (B,) (or a scalar) against x (B, ...)."""
  v = jnp.asarray(v)
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def bind_params(score_fn, params):
  """`score(x, t)` with the parameters bound, the form `sde.reverse` expects."""
  return lambda x, t: score_fn(params, x, t)


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


def class_registry(base, kind, config_key):
  """A registry of `base` subclasses: returns `(register, get, names)`.

  `register` is a class decorator, used bare or as `register(name='...')` (the default name is the class name;
  names are lower-case). `get(name_or_class)` accepts a registered name (any case) or a `base` subclass, and
  names `config_key` (e.g. 'sampling.predictor') in its error. `names()` lists the registered names, sorted.
  """
  registry = {}

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

  def get(name):
    if isinstance(name, type) and issubclass(name, base):
      return name
    if isinstance(name, str) and name.lower() in registry:
      return registry[name.lower()]
    raise ValueError(f"{config_key}={name!r} is not a registered {base.__name__.lower()}; "
                     f"choose one of {sorted(registry)} (or pass a {base.__name__} subclass).")

  def names():
    return sorted(registry)

  return register, get, names
