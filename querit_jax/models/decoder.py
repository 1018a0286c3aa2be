"""The Qwen3 decoder (transformers `Qwen3Model` / `Qwen3MoeModel`) in Flax NNX.

Pre-norm blocks `h = x + attn(ln1(x)); y = h + mlp(ln2(h))`, a final RMSNorm, no embedding scaling;
`mlp` is a SwiGLU, or a sparse MoE block on the layers `DecoderConfig.is_sparse` names. Inputs use
segment ids instead of an attention mask: 0 marks padding, 1..S mark the pairs packed into a row,
and positions restart at 0 for each pair. An unpacked, padded batch is segment_ids = attention_mask.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from querit_jax.models.attention import Attention
from querit_jax.models.decoder_config import DecoderConfig, dtype_of
from querit_jax.models.layers import Embed, RMSNorm, SwiGLU, run_layers
from querit_jax.models.moe import MoeBlock
from querit_jax.sharding import axes, shard


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer: int, *, rngs: nnx.Rngs):
        pdt = dtype_of(cfg.param_dtype)
        self.sparse = cfg.is_sparse(layer)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pdt)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pdt)
        if self.sparse:
            self.mlp = MoeBlock(cfg, rngs=rngs)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, rngs=rngs, param_dtype=pdt)

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array):
        """Returns (x, None), or for a sparse layer (x, (router logits [B, T, E], dropped
        share))."""
        x = x + self.self_attn(self.input_layernorm(x), positions, segment_ids)
        h = self.post_attention_layernorm(x)
        aux = None
        if self.sparse:
            h, logits, dropped = self.mlp(h, segment_ids > 0)
            aux = (logits, dropped)
        else:
            h = self.mlp(h)
        return shard(x + h, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED)), aux

    def decode(self, x, positions, mask, cache, index):
        """One incremental step with a KV cache (see `Attention.decode`). Returns (x, cache)."""
        a, cache = self.self_attn.decode(self.input_layernorm(x), positions, mask, cache, index)
        x = x + a
        h = self.post_attention_layernorm(x)
        h = self.mlp(h)[0] if self.sparse else self.mlp(h)  # every token: a real one
        return x + h, cache


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 at every segment start (padding gets 0s it never uses).

    Works for left padding, right padding and packed rows: position = index - index of the segment's
    first token.
    """
    t = jnp.arange(segment_ids.shape[1])[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    start_index = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)
    return (t - start_index).astype(jnp.int32)


class Qwen3Decoder(nnx.Module):
    """Embeddings + N decoder layers + final norm; returns final hidden states [B, T, H]."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(
            cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=dtype_of(cfg.param_dtype)
        )
        self.layers = nnx.List([DecoderLayer(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, param_dtype=dtype_of(cfg.param_dtype)
        )

    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array | None = None,
        return_aux: bool = False,
    ):
        """Args: input_ids, segment_ids [B, T] int; positions [B, T] (derived from segments if
        None).

        Returns hidden states [B, T, H], and with `return_aux` also {"router_logits": the sparse
        layers' router logits [B, T, E] (what the load-balancing loss reads), "moe_dropped": their
        shares of real token copies dropped over capacity (float32 scalars)}.
        """
        if positions is None:
            positions = positions_from_segments(segment_ids)
        x = self.embed_tokens(input_ids, dtype_of(self.cfg.dtype))
        x = shard(x, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))
        x, outs = run_layers(
            self.layers,
            lambda lyr, h: lyr(h, positions, segment_ids),
            x,
            remat=self.cfg.remat,
            scan=self.cfg.scan_layers,
        )
        sparse = [out for out in outs if out is not None]
        x = self.norm(x)
        if not return_aux:
            return x
        aux = {
            "router_logits": tuple(lg for lg, _ in sparse),
            "moe_dropped": tuple(d for _, d in sparse),
        }
        return x, aux

    def init_cache(self, batch: int, length: int, dtype=jnp.float32) -> list:
        """Empty (keys, values) [B, S, K, D] per layer for `decode`."""
        shape = (batch, length, self.cfg.num_kv_heads, self.cfg.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.layers]

    def decode(self, input_ids, positions, mask, cache, index):
        """Incremental forward of new tokens [B, T] at cache slots index..index+T-1.

        Args:
          positions: [B, T] RoPE positions; mask: [B, T, S] which cache slots each new token sees.
        Returns: (final hidden states [B, T, H], updated cache).
        """
        x = self.embed_tokens(input_ids, dtype_of(self.cfg.dtype))
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache):
            x, layer_cache = layer.decode(x, positions, mask, layer_cache, index)
            new_cache.append(layer_cache)
        return self.norm(x), new_cache
