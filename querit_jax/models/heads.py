"""Scoring heads and pooling for cross-encoders.

Pooling is by segment ids (the attention mask of an unpacked batch), never by searching for a pad
id: each pair is read at its own last real token (decoders) or its own first token (encoders, CLS).
This is correct for left and right padding, for packed rows, and when the tokenizer's pad id equals
the end token the template appends (Qwen3-Embedding's `<|endoftext|>`), the case where transformers'
`Qwen3ForSequenceClassification` (rightmost token != pad id) would read the token before it.

Heads:
  * `score`: a linear head [H, num_labels] without bias (HF `score.weight` [num_labels, H]);
  * `yes_no`: Qwen3-Reranker scoring, logit[yes] - logit[no] of the LM head (or the tied embedding),
    which equals a linear head with w = lm_head[yes] - lm_head[no] (used for export).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from querit_jax.sharding import axes

HEAD_KINDS = ("score", "yes_no", "embed")
POOLINGS = ("last", "cls", "mean")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """`score` / `yes_no`: rerankers; `embed`: an embedder (first-stage retrieval)."""

    kind: str = "score"
    num_labels: int = 1
    # Token ids read by the yes/no head (Qwen3 vocabulary: "yes" = 9693, "no" = 2152).
    yes_token_id: int | None = None
    no_token_id: int | None = None
    # Embedders: which token(s) make the embedding, and whether it is L2-normalised.
    pooling: str = "last"
    normalize: bool = True

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"Unknown head kind {self.kind!r}; choose one of {HEAD_KINDS}.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {self.pooling!r}; choose one of {POOLINGS}.")
        if self.kind == "yes_no" and (self.yes_token_id is None or self.no_token_id is None):
            raise ValueError("A yes_no head needs yes_token_id and no_token_id.")
        if self.num_labels != 1:
            raise ValueError(
                f"Rerankers here produce one score per pair; num_labels={self.num_labels}."
            )

    def to_dict(self):
        return dataclasses.asdict(self)


def last_token_index(segment_ids: jax.Array, num_segments: int) -> tuple[jax.Array, jax.Array]:
    """Index of the last token of each segment 1..num_segments in every row.

    Args:
      segment_ids: [B, T] with 0 = padding.
    Returns:
      (index [B, S] int32, valid [B, S] bool): valid is False for segments absent from a row.
    """
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    seg = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
    match = segment_ids[:, None, :] == seg[None, :, None]  # [B, S, T]
    idx = jnp.max(jnp.where(match, t, -1), axis=-1)
    return jnp.maximum(idx, 0), idx >= 0


def first_token_index(segment_ids: jax.Array, num_segments: int) -> tuple[jax.Array, jax.Array]:
    """Index of the first token of each segment (CLS pooling for encoders); see
    `last_token_index`."""
    t_len = segment_ids.shape[1]
    t = jnp.arange(t_len, dtype=jnp.int32)
    seg = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
    match = segment_ids[:, None, :] == seg[None, :, None]
    idx = jnp.min(jnp.where(match, t, t_len), axis=-1)
    return jnp.minimum(idx, t_len - 1), idx < t_len


def gather_tokens(hidden: jax.Array, index: jax.Array) -> jax.Array:
    """hidden [B, T, H], index [B, S] -> [B, S, H]."""
    return jnp.take_along_axis(hidden, index[..., None], axis=1)


def pool(
    hidden: jax.Array, segment_ids: jax.Array, num_segments: int, pooling: str, normalize: bool
) -> jax.Array:
    """Embeddings [B, S, H] (float32) of each segment: its last token, first token (CLS) or mean.

    Mean pooling averages the segment's tokens in float32, like sentence-transformers' Pooling
    (sum of masked states / number of tokens); L2 normalisation divides by max(norm, 1e-12) as
    torch.nn.functional.normalize does. Absent segments give zeros.
    """
    hidden = hidden.astype(jnp.float32)
    if pooling == "mean":
        seg = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
        member = (segment_ids[:, None, :] == seg[None, :, None]).astype(jnp.float32)  # [B, S, T]
        out = jnp.einsum("bst,bth->bsh", member, hidden) / jnp.maximum(
            member.sum(-1, keepdims=True), 1e-9
        )
    else:
        find = last_token_index if pooling == "last" else first_token_index
        index, valid = find(segment_ids, num_segments)
        out = jnp.where(valid[..., None], gather_tokens(hidden, index), 0.0)
    if normalize:
        out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


class ScoreHead(nnx.Module):
    """Linear scoring head without bias: [B, S, H] -> [B, S, num_labels]."""

    def __init__(self, hidden: int, num_labels: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        init = nnx.initializers.normal(stddev=0.02)
        self.kernel = nnx.Param(
            init(rngs.params(), (hidden, num_labels), param_dtype),
            out_sharding=(axes.EMBED, axes.LABELS),
        )

    def __call__(self, pooled: jax.Array) -> jax.Array:
        return pooled @ self.kernel[...].astype(pooled.dtype)


class LMHead(nnx.Module):
    """Untied output projection [H, V] (HF `lm_head.weight` [V, H])."""

    def __init__(self, hidden: int, vocab: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        init = nnx.initializers.normal(stddev=0.02)
        self.kernel = nnx.Param(
            init(rngs.params(), (hidden, vocab), param_dtype), out_sharding=(axes.EMBED, axes.VOCAB)
        )


def yes_no_score(pooled: jax.Array, output_matrix: jax.Array, yes: int, no: int) -> jax.Array:
    """logit[yes] - logit[no] for pooled states [B, S, H] and an output matrix [H, V]. Returns [B,
    S]."""
    w = output_matrix.astype(pooled.dtype)
    return pooled @ w[:, yes] - pooled @ w[:, no]
