"""Segment-masked attention on the Pallas TPU splash-attention kernel (jax.experimental.pallas).

Splash attention (block-sparse flash attention) takes per-example [heads, length, head_dim] inputs,
a static block mask (causal for decoders, full for encoders) and per-token segment ids; blocks the
mask rules out are skipped, and the logits never exist in memory. As MaxText does, the kernel runs
inside a `jax.shard_map` over the batch mesh axes (and the head axes when tensor parallelism splits
heads), `vmap`ped over the local batch; GQA is native (key/value heads divide the query heads). The
kernel does not scale logits, so queries are scaled first. Off TPU it runs in Pallas interpret mode
(tests).
"""

import jax
from flax.core import spmd
from jax.sharding import PartitionSpec as P

from querit_jax.sharding import axes

BLOCKS = (512, 256, 128)


def block_size(length: int) -> int:
    """The largest supported block that divides `length` (splash tiles both axes by blocks)."""
    for block in BLOCKS:
        if length % block == 0:
            return block
    raise ValueError(
        f"attention_impl='splash' needs a length that is a multiple of 128, got {length}; use "
        "attention_impl='xla' or pad data.max_length."
    )


def _kernel(heads: int, length: int, causal: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (length, length)
    one = sm.CausalMask(shape) if causal else sm.FullMask(shape)
    b = block_size(length)
    sizes = sk.BlockSizes(
        block_q=b,
        block_kv_compute=b,
        block_kv=b,
        block_q_dkv=b,
        block_kv_dkv=b,
        block_kv_dkv_compute=b,
        block_q_dq=b,
        block_kv_dq=b,
    )
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([one] * heads),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=jax.default_backend() != "tpu",
    )
    return kernel, sk.SegmentIds


def _local(q, k, v, segment_ids, causal: bool):
    """One device: q [b, N, T, D], k/v [b, K, T, D], segment_ids [b, T] -> [b, N, T, D]."""
    kernel, segment_type = _kernel(q.shape[1], q.shape[2], causal)
    return jax.vmap(lambda qq, kk, vv, s: kernel(qq, kk, vv, segment_ids=segment_type(s, s)))(
        q, k, v, segment_ids
    )


def splash_attention(q, k, v, segment_ids, *, causal: bool, scale: float) -> jax.Array:
    """q [B, T, N, D], k/v [B, T, K, D], segment_ids [B, T] -> [B, T, N, D] (q's dtype)."""
    q = (q * scale).astype(q.dtype).transpose(0, 2, 1, 3)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    mesh = jax.sharding.get_abstract_mesh()
    rules = dict(spmd.get_logical_axis_rules() or ())
    if mesh.empty or not rules:
        out = _local(q, k, v, segment_ids, causal)
    else:
        batch = rules.get(axes.BATCH)
        qs = P(batch, rules.get(axes.ACT_HEADS), None, None)
        ks = P(batch, rules.get(axes.ACT_KV_HEADS), None, None)
        out = jax.shard_map(
            lambda a, b, c, s: _local(a, b, c, s, causal),
            mesh=mesh,
            in_specs=(qs, ks, ks, P(batch, None)),
            out_specs=qs,
            check_vma=False,
        )(q, k, v, segment_ids)
    return out.transpose(0, 2, 1, 3)
