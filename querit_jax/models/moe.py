"""Sparse mixture-of-experts feed-forward (transformers' Qwen3MoeSparseMoeBlock semantics).

Routing: logits = x @ W_router; p = softmax(logits) over all experts (float32); the top-k of p are
the chosen experts; with `norm_topk_prob` their weights are renormalised to sum to one (otherwise
they stay full-softmax probabilities: HF semantics, not MaxText's softmax over the top-k logits);
the weights are cast back to the activation dtype. Every chosen expert computes `down(silu(gate(x))
* up(x))` and the outputs are summed with the weights.

Execution paths (one semantics, `DecoderConfig.moe_impl`):
  * `dense`: every expert on every token, masked combine (the reference; E times the FLOPs);
  * `grouped`: token copies sorted by expert, one grouped matmul (`jax.lax.ragged_dot`) per
    weight; dropless. Under a mesh it runs inside a `shard_map` over the batch axes, so each device
    sorts and computes only its own tokens (`moe_parallel.experts_grouped_sharded`);
  * `ep`: expert parallelism over the `expert` mesh axis (`moe_parallel.py`): dropless with
    worst-case buffers (`moe_capacity_factor <= 0`), or with a fixed capacity per expert, where
    copies over capacity are dropped (padding first) and counted.
All are pure functions of arrays; `MoeBlock` only holds the parameters.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from querit_jax.models.decoder_config import DecoderConfig, dtype_of
from querit_jax.sharding import axes


def route(x: jax.Array, router: jax.Array, top_k: int, norm_topk_prob: bool):
    """Args: x [N, H], router [H, E]. Returns (logits [N, E], weights [N, k] in x.dtype, experts [N,
    k])."""
    logits = x @ router.astype(x.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return logits, weights.astype(x.dtype), experts


def ffn(h_gate, h_up):
    return jax.nn.silu(h_gate) * h_up


def experts_dense(x, weights, experts, w_gate, w_up, w_down):
    """Reference: every expert on every token. x [N, H]; w_gate/w_up [E, H, I]; w_down [E, I, H]."""
    num_experts = w_gate.shape[0]
    combine = jnp.sum(
        jax.nn.one_hot(experts, num_experts, dtype=x.dtype) * weights[..., None], axis=1
    )  # [N, E]
    hidden = ffn(jnp.einsum("nh,ehi->nei", x, w_gate), jnp.einsum("nh,ehi->nei", x, w_up))
    out = jnp.einsum("nei,eih->neh", hidden, w_down)
    return jnp.einsum("ne,neh->nh", combine, out)


def grouped_ffn(xs, group_sizes, w_gate, w_up, w_down):
    """Rows of `xs` [M, H] sorted by expert, `group_sizes` [E] rows each (the rest are zero
    rows)."""
    hidden = ffn(
        jax.lax.ragged_dot(xs, w_gate, group_sizes), jax.lax.ragged_dot(xs, w_up, group_sizes)
    )
    return jax.lax.ragged_dot(hidden, w_down, group_sizes)


def experts_grouped(x, weights, experts, w_gate, w_up, w_down):
    """Dropless sorted dispatch: N*k token copies sorted by expert, grouped matmuls, weighted
    scatter-add."""
    k = experts.shape[1]
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token = order // k
    group_sizes = jnp.bincount(flat, length=w_gate.shape[0]).astype(jnp.int32)
    out = grouped_ffn(x[token], group_sizes, w_gate, w_up, w_down)  # [N*k, H]
    out = out * weights.reshape(-1)[order][:, None]
    return jnp.zeros_like(x).at[token].add(out)


class MoeBlock(nnx.Module):
    """Router `gate` [H, E] (HF mlp.gate.weight [E, H]) and stacked experts (HF
    mlp.experts.{e}.*)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        pdt = dtype_of(cfg.param_dtype)
        h, e, i = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
        init = nnx.initializers.normal(stddev=0.02)
        self.cfg = cfg
        self.gate = nnx.Param(init(rngs.params(), (h, e), pdt), out_sharding=(axes.EMBED, None))
        self.gate_proj = nnx.Param(
            init(rngs.params(), (e, h, i), pdt),
            out_sharding=(axes.EXPERT, axes.EMBED, axes.EXPERT_MLP),
        )
        self.up_proj = nnx.Param(
            init(rngs.params(), (e, h, i), pdt),
            out_sharding=(axes.EXPERT, axes.EMBED, axes.EXPERT_MLP),
        )
        self.down_proj = nnx.Param(
            init(rngs.params(), (e, i, h), pdt),
            out_sharding=(axes.EXPERT, axes.EXPERT_MLP, axes.EMBED),
        )

    def __call__(self, x: jax.Array, token_mask: jax.Array | None = None):
        """x [B, T, H], token_mask [B, T] (real tokens; capacity goes to them before padding).

        Returns (y [B, T, H], router logits [B, T, E], dropped): `dropped` is the float32 share of
        real token copies dropped for lack of capacity (0 on the dropless paths).
        """
        from querit_jax.models import moe_parallel

        b, t, h = x.shape
        cfg = self.cfg
        logits, weights, experts = route(
            x.reshape(b * t, h), self.gate[...], cfg.num_experts_per_tok, cfg.norm_topk_prob
        )
        weights, experts = weights.reshape(b, t, -1), experts.reshape(b, t, -1)
        params = [p[...].astype(x.dtype) for p in (self.gate_proj, self.up_proj, self.down_proj)]
        dropped = jnp.zeros((), jnp.float32)
        if cfg.moe_impl == "dense":
            flat = experts_dense(
                x.reshape(b * t, h), weights.reshape(b * t, -1), experts.reshape(b * t, -1), *params
            )
            y = flat.reshape(b, t, h)
        elif cfg.moe_impl == "grouped":
            y = moe_parallel.experts_grouped_sharded(x, weights, experts, *params)
        else:
            mask = jnp.ones((b, t), bool) if token_mask is None else token_mask
            y, dropped = moe_parallel.experts_expert_parallel(
                x, weights, experts, mask, *params, capacity_factor=cfg.moe_capacity_factor
            )
        return y, logits.reshape(b, t, -1), dropped
