"""hrrl_jax: hierarchically robust representation learning in JAX."""
