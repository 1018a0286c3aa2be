"""Decoder cross-encoder: Qwen3 backbone + a scoring head read at each pair's last real token."""

import jax
import jax.numpy as jnp
from flax import nnx

from querit_jax.models.decoder import Qwen3Decoder
from querit_jax.models.decoder_config import DecoderConfig, dtype_of
from querit_jax.models.heads import (
    HeadConfig,
    LMHead,
    ScoreHead,
    gather_tokens,
    last_token_index,
    yes_no_score,
)


class DecoderCrossEncoder(nnx.Module):
    """Scores (query, document) pairs with a Qwen3 decoder.

    Parameters mirror transformers: `model` is Qwen3Model, `score` the sequence-classification head,
    `lm_head` the (untied) LM head of a Qwen3ForCausalLM used by the yes/no head.
    """

    def __init__(self, cfg: DecoderConfig, head: HeadConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.head = head
        pdt = dtype_of(cfg.param_dtype)
        self.model = Qwen3Decoder(cfg, rngs=rngs)
        if head.kind == "score":
            self.score = ScoreHead(cfg.hidden_size, head.num_labels, rngs=rngs, param_dtype=pdt)
        elif not cfg.tie_word_embeddings:
            self.lm_head = LMHead(cfg.hidden_size, cfg.vocab_size, rngs=rngs, param_dtype=pdt)

    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array | None = None,
        num_segments: int = 1,
        token_type_ids: jax.Array | None = None,
        return_aux: bool = False,
    ):
        """Returns scores [B, num_segments] (float32; absent segments score 0), and with
        `return_aux`
        also {"router_logits": (per sparse layer [B, T, E], ...), "moe_dropped": (per sparse layer,
        the share of real token copies dropped over expert capacity, ...)} for MoE training."""
        del token_type_ids  # decoders have none
        hidden, aux = self.model(input_ids, segment_ids, positions, return_aux=True)
        index, valid = last_token_index(segment_ids, num_segments)
        pooled = gather_tokens(hidden, index)  # [B, S, H]
        if self.head.kind == "score":
            scores = self.score(pooled)[..., 0]
        else:
            matrix = (
                self.model.embed_tokens.embedding[...].T
                if self.cfg.tie_word_embeddings
                else self.lm_head.kernel[...]
            )
            scores = yes_no_score(pooled, matrix, self.head.yes_token_id, self.head.no_token_id)
        scores = jnp.where(valid, scores.astype(jnp.float32), 0.0)
        return (scores, aux) if return_aux else scores
