"""Test-wide settings: float32 matmuls at full precision, so closed-form comparisons are tight on CPU; one
persistent XLA compilation cache per test session.

The cache is shared by the session's pytest workers and by every process they start (`main.py` runs inherit
the environment), so the tiny test models compile once per session instead of once per process. The process
that starts the session makes a fresh folder (xdist workers inherit its environment) and removes it at the end,
so a session never reads what another checkout compiled.
"""
import os
import shutil
import tempfile

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="score_sde_tests_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # pylint: disable=wrong-import-position

# jax may have been imported (by a plugin) before the variables above were set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
