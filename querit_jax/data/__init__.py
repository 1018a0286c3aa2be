"""Data: dataset formats, the XQuAD-R converter, training groups, templates, TFDS builders, grain
pipelines."""
