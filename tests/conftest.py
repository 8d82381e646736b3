"""Test-wide settings: float32 matmuls at full precision, so closed-form comparisons are tight on CPU."""
import jax

jax.config.update("jax_default_matmul_precision", "highest")
