"""Rematerialised residual blocks (`training.remat`): the train step's backward pass recomputes each block.

Without remat, reverse-mode autodiff keeps every intermediate of every block (GroupNorm inputs and outputs,
activations, dropout masks, conv outputs) alive from the forward pass to the backward pass. Under `jax.checkpoint`
(Chen et al. 2016, "Training deep nets with sublinear memory cost") a block keeps only its inputs and recomputes
the rest while its gradient is taken: about one more forward pass of the blocks for several fewer activations
per block held at once.

A model opts in with a `remat: bool = False` field and builds its blocks from `block(cls, self.remat)`; the
train step's model is `with_remat(model, training.remat)`, a clone, as `ops.with_ops` clones for the ops.
Evaluation, sampling and likelihoods keep the plain model (they take no gradients of the network's
parameters, and a remat'd forward pass is the plain one).

Names and parameters: `nn.remat(cls)` would subclass the block under the name `Checkpoint<cls>`, so Flax would
auto-name its instances `Checkpoint<cls>_k` and the parameter tree would no longer match the 2021 checkpoints.
`block(cls, True)` instead lifts the block's own `__call__` (Flax's method form of `nn.remat`, which keeps the
module, its scope and its name) on a subclass that keeps the class name, so instances are still `<cls>_k` with
the same submodules. Flax's lifted remat replays the block's rng streams, so dropout draws the same masks in
the recomputation as in the forward pass, and the same masks as without remat (tests/test_memory_knobs.py).

Attention blocks, resampling and the output head are not rematerialised: with every residual block remat'd
they hold a sixth of what the DDPM++ backward pass keeps (benchmarks/memory.py: 30 of 171 MiB per example
remain, mostly the block inputs and skips), so remat'ing them too would save little more.
"""
import functools
import inspect

import flax.linen as nn

# Arguments of a block's __call__ that are Python values steering the trace (train: dropout on or off), not
# arrays: jax.checkpoint must see them as static.
STATIC_ARGS = ("train",)


@functools.lru_cache(maxsize=None)
def _rematerialised(cls):
  """`cls` with its `__call__` under `nn.remat`, as a subclass of the same name (hence the same auto-names)."""
  signature = inspect.signature(cls.__call__)
  names = list(signature.parameters)  # ['self', ...]
  # nn.remat on a method counts `self` as argument 0.
  static_argnums = tuple(i for i, name in enumerate(names) if name in STATIC_ARGS)
  lifted = nn.remat(cls.__call__, static_argnums=static_argnums)

  def __call__(self, *args, **kwargs):
    # jax.checkpoint takes static arguments by position only: bind keywords and defaults to positions.
    bound = signature.bind(self, *args, **kwargs)
    bound.apply_defaults()
    return lifted(*bound.args, **bound.kwargs)

  __call__.__doc__ = cls.__call__.__doc__
  return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


def block(cls, remat):
  """The block class a model instantiates: `cls` itself, or with `remat` its rematerialised twin."""
  return _rematerialised(cls) if remat else cls


def with_remat(model, remat):
  """`model` whose residual blocks are rematerialised when `remat` (a clone with `remat=True`; the same
  parameters), else `model` itself."""
  if not remat:
    return model
  if "remat" not in model.__dataclass_fields__:
    raise ValueError(f"training.remat=True: model {type(model).__name__} has no rematerialisable blocks; set "
                     "training.remat=False.")
  return model.clone(remat=True)
