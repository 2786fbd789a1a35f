"""`python -m hrrl_jax.features`: deep features of a trained run (see hrrl_jax.evaluate.features)."""

from hrrl_jax.evaluate.features import main

if __name__ == "__main__":
    main()
