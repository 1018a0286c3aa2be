"""Conversion between Hugging Face checkpoints (safetensors) and querit_jax model checkpoints."""
