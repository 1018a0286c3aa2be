"""Model families (Flax NNX), heads, presets, and the model checkpoint format."""
