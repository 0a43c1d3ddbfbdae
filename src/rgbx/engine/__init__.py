"""Engine: configuration, training loop, evaluation, checkpoints."""
