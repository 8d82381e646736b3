"""The train step's compute dtype (`training.compute_dtype`): bfloat16 activations, float32 everything else.

`with_compute_dtype(model, "bfloat16")` is the model the train step's loss differentiates: at the network's
entry its parameters and input image are cast to bfloat16, its output is cast back to float32. So the
parameters, the EMA, the optimizer state and the gradients (the cast's transpose casts them back) stay float32,
the loss is computed and reduced in float32 from the float32 output, and only the network's convolutions,
matmuls and activations run in bfloat16 (Micikevicius et al. 2018, "Mixed precision training", without loss
scaling: bfloat16 has float32's exponent range). Evaluation, sampling and likelihoods keep the plain float32
model.

Kept in float32 inside the network, because bfloat16's 8-bit mantissa would lose them:
* the time labels and their embedding (sinusoid, Fourier features, the embedding MLP; the models cast the
  embedding to the activations' dtype where the blocks read it): 999 t in bfloat16 moves in steps of 4;
* the Gaussian Fourier projection's frozen W (`KEEP_FLOAT32`): its features are sin(2 pi log(sigma) W) with
  |W| ~ 16, whose phase a 0.4% rounding of W would scramble;
* GroupNorm's (and InstanceNorm++'s) statistics and normalisation: Flax's GroupNorm and jnp.mean / jnp.var
  compute them in at least float32 and return the input's dtype. (Their float32 internals are also what the
  backward pass keeps: about half of the bfloat16 step's saved activations, which is why bfloat16 alone cuts
  them 1.5x rather than 2x; with training.remat they are recomputed. benchmarks/memory.py.)
The attention logits and softmax compute in bfloat16. Measured on a 16px DDPM++ (nf 32, ch_mult (1, 2, 2),
init_scale 1 so that every block contributes), 256 examples: bfloat16 moves the mean loss by 5e-5 relative
(per example: median 6e-4, max 3e-3), and float32 logits and softmax on top of it leave that unchanged (3e-5;
median 7e-4, max 3e-3), so they stay as the casting approach has them.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Parameters of modules with these class names are never cast (see the module note).
KEEP_FLOAT32 = ("GaussianFourierProjection",)


def check_compute_dtype(name):
  """Refuses a `training.compute_dtype` that is not one of DTYPES."""
  if name not in DTYPES:
    raise ValueError(f"training.compute_dtype={name!r} is not one of {list(DTYPES)}.")


def _kept(path):
  return any(getattr(k, "key", "").rsplit("_", 1)[0] in KEEP_FLOAT32 for k in path)


def cast_params(params, dtype):
  """Every floating-point parameter as `dtype`, except those of `KEEP_FLOAT32` modules."""

  def cast(path, p):
    if _kept(path) or not jnp.issubdtype(p.dtype, jnp.floating):
      return p
    return p.astype(dtype)

  return jax.tree_util.tree_map_with_path(cast, params)


@dataclasses.dataclass(frozen=True)
class ComputeDtype:
  """A network computing in `dtype`: `apply` as `flax.linen.Module.apply` with the network's `(x, labels, ...)`
  arguments, casting the parameters and `x` to `dtype` (labels stay as given) and the output to float32."""
  model: nn.Module
  dtype: Any

  def apply(self, variables, x, *args, **kwargs):
    variables = {name: cast_params(v, self.dtype) if name == "params" else v for name, v in variables.items()}
    out = self.model.apply(variables, x.astype(self.dtype), *args, **kwargs)
    return out.astype(jnp.float32)


def with_compute_dtype(model, name):
  """`model` computing in `training.compute_dtype=name`: `model` itself for float32, else a `ComputeDtype`."""
  check_compute_dtype(name)
  if name == "float32":
    return model
  return ComputeDtype(model, DTYPES[name])
