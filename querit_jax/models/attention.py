"""Segment-aware grouped-query attention (the Qwen3 attention block), on the backend's fused kernel.

A query attends to a key only when both carry the same segment id (packed pairs never see each
other; padding, segment 0, only sees padding, so no row is ever fully masked) and, for causal
models, when the key is not in the future. Logits and softmax run in float32 whatever the compute
dtype.

Implementations (`attention_impl`, a runtime field of the model configs; one semantics):
  * "xla": `jax.nn.dot_product_attention(implementation="xla")` with the segment mask [B, 1, T, S]
    (causality through `is_causal`); materialises the logits, like the reference;
  * "cudnn": the same call with cuDNN's fused flash attention (GPU, bf16/fp16 only): the segment
    mask becomes cuDNN's bias, the causal mask its CAUSAL mask type (blocks above the diagonal are
    skipped), and the [B, N, T, S] logits never exist;
  * "splash": the Pallas TPU splash-attention kernel (`splash_attention.py`) with segment ids and a
    causal or full block mask, inside a `shard_map` over the batch and head mesh axes;
  * "reference": the explicit einsum below ([B, K, G, T, S] float32 logits), kept for parity tests;
  * "auto": cudnn on GPU for bf16/fp16, splash on TPU when the length is a multiple of 128, else
    xla.
The KV-cache decode path (`Attention.decode`, used by mining/jax_sampler.py) takes an explicit
[B, T, S] mask over cache slots and always runs the reference, so sampling stays exact.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from querit_jax.models.layers import DenseGeneral, RMSNorm, apply_rope
from querit_jax.sharding import axes, shard

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "reference")


def attention_mask(segment_ids: jax.Array, causal: bool) -> jax.Array:
    """[B, T] segment ids -> [B, T, T] boolean mask (query, key)."""
    mask = segment_ids[:, :, None] == segment_ids[:, None, :]
    if causal:
        t = segment_ids.shape[1]
        mask = mask & jnp.tril(jnp.ones((t, t), dtype=bool))[None]
    return mask


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float
) -> jax.Array:
    """Reference grouped-query attention with an explicit mask.

    Args:
      q: [B, T, N, D] queries; k, v: [B, S, K, D] with N a multiple of K.
      mask: [B, T, S] boolean, True where the query may attend to the key.
      scale: logit scale (head_dim ** -0.5 for Qwen3).
    Returns:
      [B, T, N, D] in q's dtype.
    """
    b, t, n, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, d)  # head h uses kv head h // (N/K), as HF's repeat_kv
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, n, d)


def resolve_impl(impl: str, dtype, length: int) -> str:
    """The implementation "auto" stands for on the default backend (others pass through)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r}; choose one of {ATTENTION_IMPLS}.")
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if backend == "tpu" and length % 128 == 0:
        return "splash"
    return "xla"


def segment_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    causal: bool,
    scale: float,
    impl: str = "auto",
) -> jax.Array:
    """Attention within segments (see the module docstring).

    Args:
      q: [B, T, N, D]; k, v: [B, T, K, D] with N a multiple of K; segment_ids: [B, T] (0 = padding).
      causal: decoders (True) or encoders (False).
      impl: an ATTENTION_IMPLS name.
    Returns:
      [B, T, N, D] in q's dtype.
    """
    impl = resolve_impl(impl, q.dtype, q.shape[1])
    if impl == "reference":
        return dot_product_attention(q, k, v, attention_mask(segment_ids, causal), scale)
    if impl == "splash":
        from querit_jax.models.splash_attention import splash_attention

        return splash_attention(q, k, v, segment_ids, causal=causal, scale=scale)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [B, 1, T, S]
    return jax.nn.dot_product_attention(
        q, k, v, mask=same, scale=scale, is_causal=causal, implementation=impl
    )


class Attention(nnx.Module):
    """Qwen3 self-attention: q/k/v projections, RMSNorm on q and k per head *before* RoPE, GQA,
    o_proj."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        h, n, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.head_dim = d
        self.rope_theta = cfg.rope_theta
        self.impl = cfg.attention_impl
        bias = cfg.attention_bias
        self.q_proj = DenseGeneral(
            (h,),
            (n, d),
            (axes.EMBED, axes.HEADS, axes.HEAD_DIM),
            rngs=rngs,
            use_bias=bias,
            param_dtype=pdt,
        )
        self.k_proj = DenseGeneral(
            (h,),
            (kv, d),
            (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM),
            rngs=rngs,
            use_bias=bias,
            param_dtype=pdt,
        )
        self.v_proj = DenseGeneral(
            (h,),
            (kv, d),
            (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM),
            rngs=rngs,
            use_bias=bias,
            param_dtype=pdt,
        )
        self.o_proj = DenseGeneral(
            (n, d), (h,), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), rngs=rngs, param_dtype=pdt
        )
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=pdt)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=pdt)

    def _qkv(self, x, positions):
        q = self.q_norm(self.q_proj(x))  # [B, T, N, D]
        k = self.k_norm(self.k_proj(x))  # [B, T, K, D]
        q = shard(
            apply_rope(q, positions, self.rope_theta),
            (axes.BATCH, axes.LENGTH, axes.ACT_HEADS, None),
        )
        k = shard(
            apply_rope(k, positions, self.rope_theta),
            (axes.BATCH, axes.LENGTH, axes.ACT_KV_HEADS, None),
        )
        v = shard(self.v_proj(x), (axes.BATCH, axes.LENGTH, axes.ACT_KV_HEADS, None))
        return q, k, v

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """x [B, T, H], positions and segment_ids [B, T] -> [B, T, H] (causal within segments)."""
        q, k, v = self._qkv(x, positions)
        out = segment_attention(
            q, k, v, segment_ids, causal=True, scale=self.head_dim**-0.5, impl=self.impl
        )
        return self.o_proj(out)

    def decode(self, x, positions, mask, cache, index):
        """Incremental attention: writes this step's keys/values into `cache` at `index`.

        Args:
          x: [B, T, H] new tokens; positions [B, T]; mask [B, T, S] over the S cache slots;
          cache: (keys, values) [B, S, K, D]; index: first cache slot of these T tokens.
        Returns: (output [B, T, H], updated cache).
        """
        q, k, v = self._qkv(x, positions)
        keys = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, index, 0, 0))
        values = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, index, 0, 0))
        out = dot_product_attention(
            q, keys.astype(q.dtype), values.astype(q.dtype), mask, self.head_dim**-0.5
        )
        return self.o_proj(out), (keys, values)
