"""Experiment configs: each file's `get_config()` returns one experiment's ml_collections ConfigDict."""
