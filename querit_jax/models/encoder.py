"""BERT and XLM-RoBERTa encoders in Flax NNX (transformers' BertModel / XLMRobertaModel).

Post-LayerNorm blocks `h = LN(x + attn(x)); y = LN(h + dense(act(dense(h))))`; embeddings are word +
absolute position + token type, then LayerNorm. Attention is bidirectional within a segment (packed
pairs never see each other; padding only sees padding). Positions restart at 0 for every segment and
are shifted by `position_offset` (XLM-R: padding_idx + 1), which equals transformers on right-padded
BERT inputs and on any XLM-R input (BERT itself shifts positions under left padding; we do not).

Heads: `EncoderCrossEncoder` reproduces BertForSequenceClassification (pooler dense + tanh on CLS,
then `classifier`) and XLMRobertaForSequenceClassification (`classifier.dense` + tanh on CLS, then
`classifier.out_proj`), both with one label; `EncoderEmbedder` pools CLS or the mean of a segment's
tokens (sentence-transformers' Pooling) and optionally L2-normalises.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from querit_jax.models.attention import segment_attention
from querit_jax.models.decoder import positions_from_segments
from querit_jax.models.decoder_config import dtype_of
from querit_jax.models.encoder_config import EncoderConfig
from querit_jax.models.heads import HeadConfig, first_token_index, gather_tokens, pool
from querit_jax.models.layers import DenseGeneral, Embed, run_layers
from querit_jax.sharding import axes, shard

_ACT = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, statistics in float32 (HF names weight/bias)."""

    def __init__(self, size: int, eps: float, *, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((size,), param_dtype), out_sharding=(axes.NORM,))
        self.bias = nnx.Param(jnp.zeros((size,), param_dtype), out_sharding=(axes.NORM,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Embeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        pdt = dtype_of(cfg.param_dtype)
        self.cfg = cfg
        self.word_embeddings = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=pdt)
        self.position_embeddings = Embed(
            cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs, param_dtype=pdt
        )
        self.token_type_embeddings = Embed(
            cfg.type_vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=pdt
        )
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pdt)

    def __call__(self, input_ids, positions, token_type_ids):
        dtype = dtype_of(self.cfg.dtype)
        x = (
            self.word_embeddings(input_ids, dtype)
            + self.position_embeddings(positions + self.cfg.position_offset, dtype)
            + self.token_type_embeddings(token_type_ids, dtype)
        )
        return self.LayerNorm(x)


class SelfAttention(nnx.Module):
    """q/k/v with biases, scaled dot product (fp32 softmax), output dense + residual + LayerNorm."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        pdt = dtype_of(cfg.param_dtype)
        h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        logical = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
        self.query = DenseGeneral((h,), (n, d), logical, rngs=rngs, use_bias=True, param_dtype=pdt)
        self.key = DenseGeneral((h,), (n, d), logical, rngs=rngs, use_bias=True, param_dtype=pdt)
        self.value = DenseGeneral((h,), (n, d), logical, rngs=rngs, use_bias=True, param_dtype=pdt)
        self.output = DenseGeneral(
            (n, d),
            (h,),
            (axes.HEADS, axes.HEAD_DIM, axes.EMBED),
            rngs=rngs,
            use_bias=True,
            param_dtype=pdt,
        )
        self.LayerNorm = LayerNorm(h, cfg.layer_norm_eps, param_dtype=pdt)
        self.scale = d**-0.5
        self.impl = cfg.attention_impl

    def __call__(self, x, segment_ids):
        q = shard(self.query(x), (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None))
        k = shard(self.key(x), (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None))
        v = shard(self.value(x), (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None))
        out = segment_attention(
            q, k, v, segment_ids, causal=False, scale=self.scale, impl=self.impl
        )  # bidirectional within each segment
        return self.LayerNorm(x + self.output(out))


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        pdt = dtype_of(cfg.param_dtype)
        self.act = _ACT[cfg.hidden_act]
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.intermediate = DenseGeneral(
            (cfg.hidden_size,),
            (cfg.intermediate_size,),
            (axes.EMBED, axes.MLP),
            rngs=rngs,
            use_bias=True,
            param_dtype=pdt,
        )
        self.output = DenseGeneral(
            (cfg.intermediate_size,),
            (cfg.hidden_size,),
            (axes.MLP, axes.EMBED),
            rngs=rngs,
            use_bias=True,
            param_dtype=pdt,
        )
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=pdt)

    def __call__(self, x, segment_ids):
        h = self.attention(x, segment_ids)
        m = shard(self.act(self.intermediate(h)), (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
        return shard(self.LayerNorm(h + self.output(m)), (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))


class Encoder(nnx.Module):
    """Embeddings + N post-LN layers; returns hidden states [B, T, H]."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(self, input_ids, segment_ids, positions=None, token_type_ids=None):
        if positions is None:
            positions = positions_from_segments(segment_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = shard(
            self.embeddings(input_ids, positions, token_type_ids),
            (axes.BATCH, axes.LENGTH, axes.ACT_EMBED),
        )
        x, _ = run_layers(
            self.layers,
            lambda lyr, h: (lyr(h, segment_ids), None),
            x,
            remat=self.cfg.remat,
            scan=self.cfg.scan_layers,
        )
        return x


class EncoderCrossEncoder(nnx.Module):
    """BERT / XLM-R sequence classification with one label, read at each segment's first token
    (CLS)."""

    def __init__(self, cfg: EncoderConfig, head: HeadConfig, *, rngs: nnx.Rngs):
        if head.kind != "score":
            raise ValueError(f"Encoder rerankers have a 'score' head, not {head.kind!r}.")
        pdt = dtype_of(cfg.param_dtype)
        h = cfg.hidden_size
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        # BERT: pooler (dense + tanh) then classifier; XLM-R: classifier.dense (+ tanh) then
        # out_proj.
        self.dense = DenseGeneral(
            (h,), (h,), (axes.EMBED, None), rngs=rngs, use_bias=True, param_dtype=pdt
        )
        self.out_proj = DenseGeneral(
            (h,), (1,), (axes.EMBED, axes.LABELS), rngs=rngs, use_bias=True, param_dtype=pdt
        )

    def __call__(
        self, input_ids, segment_ids, positions=None, num_segments: int = 1, token_type_ids=None
    ):
        hidden = self.encoder(input_ids, segment_ids, positions, token_type_ids)
        index, valid = first_token_index(segment_ids, num_segments)
        cls = gather_tokens(hidden, index)  # [B, S, H]
        scores = self.out_proj(jnp.tanh(self.dense(cls)))[..., 0]
        return jnp.where(valid, scores.astype(jnp.float32), 0.0)


class EncoderEmbedder(nnx.Module):
    """Sentence embeddings: CLS or mean pooling per segment (+ optional L2 normalisation)."""

    def __init__(self, cfg: EncoderConfig, head: HeadConfig, *, rngs: nnx.Rngs):
        if head.kind != "embed":
            raise ValueError(f"EncoderEmbedder needs an 'embed' head, not {head.kind!r}.")
        self.head = head
        self.encoder = Encoder(cfg, rngs=rngs)

    def __call__(
        self, input_ids, segment_ids, positions=None, num_segments: int = 1, token_type_ids=None
    ):
        hidden = self.encoder(input_ids, segment_ids, positions, token_type_ids)
        return pool(hidden, segment_ids, num_segments, self.head.pooling, self.head.normalize)
