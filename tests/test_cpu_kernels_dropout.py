"""cpu_kernels.dropout.Dropout draws exactly nn.Dropout's masks (bit for bit), so the dropout stream matches
Flax's. The module is pure JAX: these tests run with or without the 'cpu' extra."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from score_sde.cpu_kernels import dropout


@pytest.mark.parametrize("shape", [(3,), (2, 5, 7, 3), (4, 8, 8, 16)])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.123])
def test_keep_mask_equals_jax_bernoulli(shape, keep):
  for key in (jax.random.PRNGKey(0), jax.random.PRNGKey(123), jax.random.key(7)):
    expected = jax.random.bernoulli(key, keep, shape)
    np.testing.assert_array_equal(dropout.bernoulli_keep_mask(key, keep, shape), expected)
    np.testing.assert_array_equal(jax.jit(dropout.bernoulli_keep_mask, static_argnums=(1, 2))(key, keep, shape),
                                  expected)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_dropout_module_equals_flax_dropout(rate):
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 16))
  rngs = {"dropout": jax.random.PRNGKey(5)}
  expected = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(dropout.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs), expected)
  np.testing.assert_array_equal(dropout.Dropout(rate).apply({}, x, deterministic=True), x)
