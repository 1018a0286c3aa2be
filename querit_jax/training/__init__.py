"""Training: losses, optimiser, state, the pure train step, checkpointing, metric writers, the
trainer."""
