"""Checks that the native kernels' Dropout (score_sde/cpu_kernels/dropout.py, the `dropout` of the ops that
training.conv_impl='onednn' / 'auto' on one CPU resolves to) draws exactly nn.Dropout's masks (bit for bit),
and times both.

  python benchmarks/check_fast_dropout.py
"""
import jax, jax.numpy as jnp, numpy as np, time, flax.linen as nn
from score_sde.cpu_kernels import dropout
for shape in [(3,), (2,5,7,3), (32,16,16,64), (1,)]:
  for keep in [0.9, 0.5, 0.123]:
    for k in [jax.random.PRNGKey(0), jax.random.PRNGKey(123), jax.random.key(7)]:
      a = jax.random.bernoulli(k, keep, shape)
      b = jax.jit(dropout.bernoulli_keep_mask, static_argnums=(1,2))(k, keep, shape)
      assert (a == b).all(), (shape, keep)
      assert (a == dropout.bernoulli_keep_mask(k, keep, shape)).all()
x = jax.random.normal(jax.random.PRNGKey(1), (32,16,16,64))
for rate in [0.1, 0.3]:
  y1 = nn.Dropout(rate).apply({}, x, deterministic=False, rngs={'dropout': jax.random.PRNGKey(5)})
  y2 = dropout.Dropout(rate).apply({}, x, deterministic=False, rngs={'dropout': jax.random.PRNGKey(5)})
  assert (y1 == y2).all()
print('bit-exact OK')
def t(f, *a):
  jax.block_until_ready(f(*a)); ts=[]
  for _ in range(50):
    s=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-s)
  return np.median(ts)*1e3
k = jax.random.PRNGKey(0)
print('jax bernoulli', t(jax.jit(lambda k: jax.random.bernoulli(k, 0.9, (32,16,16,64))), k))
print('ours', t(jax.jit(lambda k: dropout.bernoulli_keep_mask(k, 0.9, (32,16,16,64))), k))
g = lambda D: jax.jit(jax.grad(lambda x, k: jnp.sum(D(0.1).apply({}, x, deterministic=False, rngs={'dropout': k})**2)))
print('nn.Dropout fwd+bwd', t(g(nn.Dropout), x, k), 'ours', t(g(dropout.Dropout), x, k))
