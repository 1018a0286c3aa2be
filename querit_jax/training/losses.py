"""Ranking losses over score matrices [Q, G] (one row per query group, the positive at column 0).

Pure functions of arrays, usable in NNX graph or tree mode and testable alone.
"""

import jax
import jax.numpy as jnp


def listwise_ce(scores: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Softmax cross-entropy with the positive at index 0 (FlagEmbedding / Tevatron group loss).

    Args:
      scores: [Q, G] float.
    Returns:
      scalar mean over groups of -log softmax(scores / T)[:, 0].
    """
    logp = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature, axis=-1)
    return -jnp.mean(logp[:, 0])


def positive_first_accuracy(scores: jax.Array) -> jax.Array:
    """Share of groups whose positive outscores every negative."""
    return jnp.mean((jnp.argmax(scores, axis=-1) == 0).astype(jnp.float32))
