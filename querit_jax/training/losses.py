"""Ranking losses over score matrices [Q, G] (one row per query group, the positive at column 0).

Pure functions of arrays, usable in NNX graph or tree mode and testable alone.
"""

import jax
import jax.numpy as jnp

from querit_jax.config_lib import LOSS_NAMES


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
    attention mask: E * sum_e f_e * P_e, where over all sparse layers and real tokens f_e is the
    share of top-k assignments to expert e (counted per token, so it sums to k) and P_e the mean
    router probability. Computed on raw router logits (transformers #45120: not on softmaxed ones).

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
    """[layers, E]: each expert's share of a layer's real-token assignments times E (1 =
    balanced)."""
    m = mask.reshape(-1).astype(jnp.float32)
    loads = []
    for logits in router_logits:
        e = logits.shape[-1]
        _, chosen = jax.lax.top_k(logits.reshape(-1, e).astype(jnp.float32), top_k)
        counts = jnp.sum(jax.nn.one_hot(chosen, e) * m[:, None, None], axis=(0, 1))
        loads.append(counts / jnp.maximum(counts.sum(), 1.0) * e)
    return jnp.stack(loads)


# ----- distillation from teacher scores (label-free adaptation)
# ------------------------------------ scores, teacher: [Q, G]; mask: [Q, G] true on real list
# positions (padding is ignored everywhere).


def _masked(x: jax.Array, mask: jax.Array | None, fill: float) -> jax.Array:
    return x if mask is None else jnp.where(mask, x, fill)


def listwise_kl(scores, teacher, temperature: float = 1.0, mask=None) -> jax.Array:
    """KL(softmax(teacher / T) || softmax(student / T)) per group, averaged over groups, times T^2
    (Hinton et al.'s scaling, so gradients keep their size across T). `combined_loss` calls it with
    T = 1 on scores it has already divided by the student and teacher temperatures."""
    s = _masked(scores.astype(jnp.float32) / temperature, mask, -1e9)
    t = _masked(teacher.astype(jnp.float32) / temperature, mask, -1e9)
    p = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(
        jnp.where(p > 0, p * (jax.nn.log_softmax(t, -1) - jax.nn.log_softmax(s, -1)), 0.0), -1
    )
    return jnp.mean(kl) * temperature**2


def margin_mse(scores, teacher, mask=None) -> jax.Array:
    """MarginMSE (Hofstätter et al. 2020): the student's margins positive-minus-negative (column 0
    minus each other column) regress onto the teacher's."""
    s_margin = scores[:, :1] - scores[:, 1:]
    t_margin = teacher[:, :1] - teacher[:, 1:]
    err = jnp.square(s_margin.astype(jnp.float32) - t_margin.astype(jnp.float32))
    if mask is None:
        return jnp.mean(err)
    m = (mask[:, :1] & mask[:, 1:]).astype(jnp.float32)
    return jnp.sum(err * m) / jnp.maximum(m.sum(), 1.0)


def pointwise_bce(scores, teacher, temperature: float = 1.0, mask=None) -> jax.Array:
    """Binary cross-entropy of sigmoid(student) against the soft target sigmoid(teacher / T)."""
    target = jax.nn.sigmoid(teacher.astype(jnp.float32) / temperature)
    logits = scores.astype(jnp.float32)
    bce = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    if mask is None:
        return jnp.mean(bce)
    m = mask.astype(jnp.float32)
    return jnp.sum(bce * m) / jnp.maximum(m.sum(), 1.0)


LOSSES = LOSS_NAMES  # the names configs may use (train.loss), each handled below


def combined_loss(
    weights: dict[str, float],
    scores,
    teacher=None,
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    mask=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """sum_i w_i * loss_i over the configured losses; returns (total, {name: value}).

    The student's scores are divided by `temperature` in the listwise losses (ce, kl); the teacher's
    scores by `teacher_temperature` in every distillation loss (kl, margin_mse, bce), which is how a
    cosine-similarity teacher (scores in [-1, 1]) is brought to the student's scale.
    """
    parts = {}
    student = scores / temperature
    target = None if teacher is None else teacher / teacher_temperature
    for name in weights:
        if name == "listwise_ce":
            parts[name] = listwise_ce(_masked(scores, mask, -1e9), temperature)
        elif name == "kl":
            parts[name] = listwise_kl(student, target, 1.0, mask)
        elif name == "margin_mse":
            parts[name] = margin_mse(scores, target, mask)
        elif name == "bce":
            parts[name] = pointwise_bce(scores, target, 1.0, mask)
        else:
            raise ValueError(f"Unknown loss {name!r}; choose from {LOSSES}.")
    total = sum(w * parts[n] for n, w in weights.items())
    return total, parts
