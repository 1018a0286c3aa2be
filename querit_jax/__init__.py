"""querit_jax: train, adapt without labels, merge and release multilingual cross-encoder rerankers.

A JAX/Flax NNX implementation of the Querit-Reranker recipe (general relevance training,
synthetic-query mining with teacher soft labels, SLERP merging, export to Hugging Face PyTorch).
"""

__version__ = "0.1.0"
