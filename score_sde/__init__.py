"""score_sde: score-based generative modeling through SDEs, on today's JAX stack."""
