"""How a network's output and time labels become a score (the "preconditioning" of Karras et al. 2022, §5).

A network is called as `net(x, labels)`; what `labels` it is conditioned on and what its output means are a
convention of the SDE it was trained with. Each SDE names its convention in
`sde.parameterization(continuous, probability_flow=False)`, which returns a `Parameterization`:

  labels(t)              time (B,) -> the network's conditioning label (B,), of dtype `label_dtype`;
  to_score(output, x, t) the network output at (x, labels(t)) -> the score grad_x log p_t(x).

`models.utils.get_score_fn` composes the two around the network and asks the SDE for nothing else. The two
parameterisations of the 2021 code cover its three SDEs:

  NoisePrediction  the network predicts the noise eps of x_t = m(t) x_0 + std(t) eps, so
                   score = -output / std(t) (VP and sub-VP; DDPM's eps_theta);
  ScoreOutput      the output is the score itself (VE; NCSN's s_theta).

A new SDE either returns one of these with its own `labels` / `std` functions or defines its own subclass.
"""
import abc

import jax.numpy as jnp


def _expand(v, x):
  """Broadcasts a per-example vector (B,) against x (B, ...)."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def marginal_std(sde):
  """t -> the std of the SDE's perturbation kernel p_{0t}, for kernels whose std depends on t only."""
  return lambda t: sde.marginal_prob(jnp.zeros_like(t), t)[1]


class Parameterization(abc.ABC):
  """The map (network output, time label) <-> score of one SDE and training convention."""

  # The dtype of `labels(t)` for float32 t (float32 times, int32 indices into a noise table).
  label_dtype = jnp.float32
  # True when the network predicts the noise eps (score = -output / std), as DDIM-style samplers assume.
  predicts_noise = False

  @abc.abstractmethod
  def labels(self, t):
    """The network's conditioning label for times t (B,)."""

  @abc.abstractmethod
  def to_score(self, output, x, t):
    """The score at (x, t) given the network's output there (with labels(t))."""

  def __repr__(self):
    return f"{type(self).__name__}(label_dtype={jnp.dtype(self.label_dtype).name})"


class NoisePrediction(Parameterization):
  """score = -output / std(t): the network predicts the noise of the perturbation kernel.

  Args:
    labels: t -> label, e.g. `lambda t: t * 999`.
    std: t -> (B,) the noise level the prediction is divided by (the kernel's std, or a chain's table).
    label_dtype: the dtype `labels` returns.
  """

  predicts_noise = True

  def __init__(self, labels, std, label_dtype=jnp.float32):
    self._labels = labels
    self.std = std
    self.label_dtype = label_dtype

  def labels(self, t):
    return self._labels(t)

  def to_score(self, output, x, t):
    return -output / _expand(self.std(t), output)


class ScoreOutput(Parameterization):
  """score = output: the network outputs the score, conditioned on `labels(t)` (a noise level or an index)."""

  def __init__(self, labels, label_dtype=jnp.float32):
    self._labels = labels
    self.label_dtype = label_dtype

  def labels(self, t):
    return self._labels(t)

  def to_score(self, output, x, t):
    return output
