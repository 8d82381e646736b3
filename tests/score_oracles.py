"""Closed-form score functions shared by the sampler, likelihood and VLB tests."""
import jax
import jax.numpy as jnp


def gaussian_score(sde, mu, sd):
  """Exact score of p_t = N(m(t) mu, m(t)^2 sd^2 + std(t)^2) for data N(mu, sd^2) per dimension; mu and sd
  broadcast against x (B, H, W, C)."""
  mu, sd = jnp.asarray(mu, jnp.float32), jnp.asarray(sd, jnp.float32)

  def score_fn(params, x, t, rng=None):
    del params, rng
    m, std = sde.marginal_prob(jnp.ones_like(t), t)
    m, std = m.reshape((-1, 1, 1, 1)), std.reshape((-1, 1, 1, 1))
    return -(x - m * mu) / ((m * sd) ** 2 + std ** 2)

  return score_fn


def counting(score_fn):
  """(score_fn that also counts its evaluations with a host callback, the list it appends to). Read the count
  after `jax.effects_barrier()`."""
  counter = []

  def counted(params, x, t, rng=None):
    jax.debug.callback(lambda: counter.append(1))
    return score_fn(params, x, t)

  return counted, counter
