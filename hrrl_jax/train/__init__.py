"""Training: state, pure jitted steps, the loop, checkpoints and metrics (`loop.train_and_evaluate`)."""
