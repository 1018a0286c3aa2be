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


def load_balancing_loss(router_logits, mask: jax.Array, top_k: int) -> jax.Array:
    """Switch-Transformer load balancing, exactly transformers' `load_balancing_loss_func` with an
    attention mask: E * sum_e f_e * P_e, where over all sparse layers and real tokens f_e is the share
    of top-k assignments to expert e (counted per token, so it sums to k) and P_e the mean router
    probability. Computed on raw router logits (transformers #45120: not on softmaxed ones).

    Args:
      router_logits: per sparse layer [B, T, E] (or [N, E]).
      mask: [B, T] (or [N]) nonzero on real tokens: padding and packing gaps are excluded.
    """
    num_experts = router_logits[0].shape[-1]
    m = mask.reshape(-1).astype(jnp.float32)
    counts = jnp.zeros((num_experts,), jnp.float32)
    prob_sum = jnp.zeros((num_experts,), jnp.float32)
    for logits in router_logits:
        probs = jax.nn.softmax(logits.reshape(-1, num_experts).astype(jnp.float32), axis=-1)
        _, chosen = jax.lax.top_k(probs, top_k)
        counts += jnp.sum(jax.nn.one_hot(chosen, num_experts) * m[:, None, None], axis=(0, 1))
        prob_sum += jnp.sum(probs * m[:, None], axis=0)
    rows = jnp.maximum(m.sum() * len(router_logits), 1.0)
    return num_experts * jnp.sum((counts / rows) * (prob_sum / rows))


def router_z_loss(router_logits, mask: jax.Array) -> jax.Array:
    """ST-MoE z-loss: mean over real tokens and sparse layers of logsumexp(router logits)^2."""
    m = mask.reshape(-1).astype(jnp.float32)
    total = sum(
        jnp.sum(jax.nn.logsumexp(lg.reshape(m.shape[0], -1).astype(jnp.float32), -1) ** 2 * m)
        for lg in router_logits
    )
    return total / jnp.maximum(m.sum() * len(router_logits), 1.0)


def expert_load(router_logits, mask: jax.Array, top_k: int) -> jax.Array:
    """[layers, E]: each expert's share of a layer's real-token assignments times E (1 = balanced)."""
    m = mask.reshape(-1).astype(jnp.float32)
    loads = []
    for logits in router_logits:
        e = logits.shape[-1]
        _, chosen = jax.lax.top_k(logits.reshape(-1, e).astype(jnp.float32), top_k)
        counts = jnp.sum(jax.nn.one_hot(chosen, e) * m[:, None, None], axis=(0, 1))
        loads.append(counts / jnp.maximum(counts.sum(), 1.0) * e)
    return jnp.stack(loads)
