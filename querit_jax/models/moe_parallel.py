"""MoE dispatch over a mesh: one `jax.shard_map` around a pure function of arrays per path.

Tokens are split over the batch mesh axes (which include `expert` in the fsdp+ep preset).

`grouped` (`experts_grouped_sharded`): every device sorts and computes only its own tokens; the
expert weights enter the shard_map replicated (`P()`), so under fsdp GSPMD all-gathers each layer's
experts at the boundary (as it gathers any fsdp weight before its matmul) and reduce-scatters their
gradients; under dp they are replicated already. Without the shard_map, GSPMD cannot split the
global argsort and every device would sort and compute all the batch's token copies, then
all-reduce.

`ep` (`experts_expert_parallel`): experts are split over `expert`; on every device

  1. rank each local token copy (n*k of them) within its expert: real tokens first, in token order,
     then padding;
  2. capacity path (`capacity_factor > 0`, C = ceil(cf * n * k / E) slots per expert and source
     device): copies with rank < C are written to slot e*C + rank of a send buffer [E*C, H] (the
     rest are dropped and counted), all-to-all over `expert` (device d receives the [E_local*C, H]
     block of its experts from every device), batched matmuls per local expert over its [ep*C, H]
     rows (empty slots are zeros), all-to-all back, weighted combine at the source. Buffers are
     cf*n*k*H per device instead of the dropless path's ep*n*k*H;
  3. dropless path (`capacity_factor <= 0`, for exactness tests): the send buffer [ep, n*k, H] is
     sized for the worst case (every copy to one device), grouped matmuls (`ragged_dot`) at the
     destination. Never drops.

`jax.lax.ragged_all_to_all` (MaxText's dropless exchange) would move exactly the routed rows, but
XLA:CPU does not implement it ("HLO opcode ragged-all-to-all is not supported by XLA:CPU"), so the
fixed-shape `all_to_all` is what runs and is tested here. Same semantics as `moe.experts_dense` when
nothing is dropped; forward and gradients are tested equal on 8 CPU devices.
"""

import math

import jax
import jax.numpy as jnp
from flax.core import spmd
from jax.sharding import PartitionSpec as P

from querit_jax.models.moe import experts_grouped, ffn, grouped_ffn
from querit_jax.sharding import axes, axis_size


def _batch_axes(num_rows: int):
    """(mesh, batch mesh axes) when a mesh with rules is active and rows split over more than one
    device of the batch axes, else (None, None): the functions then run on the global arrays."""
    mesh = jax.sharding.get_abstract_mesh()
    rules = dict(spmd.get_logical_axis_rules() or ())
    if mesh.empty or not rules:
        return None, None
    batch = rules.get(axes.BATCH)
    split = axis_size(mesh, batch) if batch is not None else 1
    if split == 1 or num_rows % split:
        return None, None
    return mesh, batch


def experts_grouped_sharded(x, weights, experts, w_gate, w_up, w_down):
    """The `grouped` path, per device. x [B, T, H]; weights/experts [B, T, k] -> [B, T, H]."""

    def body(xx, ww, ee, wg, wu, wd):
        b, t, h = xx.shape
        flat = experts_grouped(
            xx.reshape(b * t, h), ww.reshape(b * t, -1), ee.reshape(b * t, -1), wg, wu, wd
        )
        return flat.reshape(b, t, h)

    mesh, batch = _batch_axes(x.shape[0])
    if mesh is None:
        return body(x, weights, experts, w_gate, w_up, w_down)
    tokens, whole = P(batch, None, None), P()
    return jax.shard_map(body, mesh=mesh, in_specs=(tokens,) * 3 + (whole,) * 3, out_specs=tokens)(
        x, weights, experts, w_gate, w_up, w_down
    )


def copy_ranks(experts: jax.Array, valid: jax.Array, num_experts: int) -> jax.Array:
    """Rank of every token copy [n*k] among the copies of its expert: real tokens first (token
    order,
    then top-k order), padding after. experts [n, k] int, valid [n] bool."""
    k = experts.shape[1]
    flat = experts.reshape(-1)
    pad = ~jnp.repeat(valid, k)
    order = jnp.argsort(flat * 2 + pad, stable=True)
    counts = jnp.bincount(flat, length=num_experts)
    starts = jnp.cumsum(counts) - counts
    sorted_rank = jnp.arange(flat.shape[0]) - starts[flat[order]]
    return jnp.zeros_like(flat).at[order].set(sorted_rank)


def _dispatch_capacity(x, weights, experts, valid, w_gate, w_up, w_down, *, axis, capacity_factor):
    """Per-device body of the capacity path: x [n, H], weights/experts [n, k], valid [n]; w_* hold
    this device's E_local experts. Returns (y [n, H], dropped real copies, real copies)."""
    ep = jax.lax.axis_size(axis)
    e_local = w_gate.shape[0]
    num_experts = ep * e_local
    n, k = experts.shape
    h = x.shape[1]
    cap = max(1, math.ceil(capacity_factor * n * k / num_experts))
    flat = experts.reshape(-1)
    rank = copy_ranks(experts, valid, num_experts)
    keep = rank < cap
    real = jnp.repeat(valid, k)
    slots = num_experts * cap
    slot = jnp.where(keep, flat * cap + rank, slots)  # out of range: dropped
    # Which copy fills each buffer slot (n*k = none): gathers straight into the buffer, no [n*k, H].
    source = jnp.full((slots,), n * k, jnp.int32).at[slot].set(jnp.arange(n * k), mode="drop")
    token = jnp.where(source < n * k, source // k, n)
    padded = jnp.concatenate([x, jnp.zeros((1, h), x.dtype)])
    send = padded[token].reshape(ep, e_local * cap, h)

    recv = jax.lax.all_to_all(send, axis, 0, 0, tiled=False)  # [ep sources, E_local * C, H]
    recv = recv.reshape(ep, e_local, cap, h).transpose(1, 0, 2, 3).reshape(e_local, ep * cap, h)
    hidden = ffn(jnp.einsum("ech,ehi->eci", recv, w_gate), jnp.einsum("ech,ehi->eci", recv, w_up))
    out = jnp.einsum("eci,eih->ech", hidden, w_down)
    out = out.reshape(e_local, ep, cap, h).transpose(1, 0, 2, 3).reshape(ep, e_local * cap, h)

    back = jax.lax.all_to_all(out, axis, 0, 0, tiled=False).reshape(slots, h)  # my copies' results
    w_slot = jnp.concatenate([weights.reshape(-1), jnp.zeros((1,), weights.dtype)])[
        jnp.minimum(source, n * k)
    ]
    y = jnp.zeros((n + 1, h), x.dtype).at[token].add(back * w_slot[:, None])[:n]
    dropped = jnp.sum(real & ~keep).astype(jnp.float32)
    return y, dropped, jnp.sum(real).astype(jnp.float32)


def _dispatch_dropless(x, weights, experts, w_gate, w_up, w_down, *, axis: str):
    """Per-device body of the dropless path. x [n, H], weights/experts [n, k]."""
    ep = jax.lax.axis_size(axis)
    e_local = w_gate.shape[0]
    n, k = experts.shape
    cap = n * k
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # token copies grouped by expert (and so by destination)
    sorted_experts = flat[order]
    dest = sorted_experts // e_local
    counts = jnp.bincount(dest, length=ep)
    starts = jnp.cumsum(counts) - counts
    slot = jnp.arange(cap) - starts[dest]  # position inside the destination's row
    send_x = jnp.zeros((ep, cap, x.shape[1]), x.dtype).at[dest, slot].set(x[order // k])
    send_e = jnp.full((ep, cap), e_local, jnp.int32).at[dest, slot].set(sorted_experts % e_local)

    recv_x = jax.lax.all_to_all(send_x, axis, 0, 0, tiled=False).reshape(ep * cap, -1)
    recv_e = jax.lax.all_to_all(send_e, axis, 0, 0, tiled=False).reshape(-1)
    local_order = jnp.argsort(recv_e, stable=True)  # empty slots (id e_local) sort last
    group_sizes = jnp.bincount(recv_e, length=e_local + 1)[:e_local].astype(jnp.int32)
    out = grouped_ffn(recv_x[local_order], group_sizes, w_gate, w_up, w_down)
    out = jnp.zeros_like(out).at[local_order].set(out).reshape(ep, cap, -1)

    back = jax.lax.all_to_all(out, axis, 0, 0, tiled=False)  # [ep, cap, H]: results for my copies
    mine = back[dest, slot] * weights.reshape(-1)[order][:, None]
    return jnp.zeros_like(x).at[order // k].add(mine)


def experts_expert_parallel(
    x, weights, experts, valid, w_gate, w_up, w_down, *, capacity_factor: float = 0.0
):
    """The `ep` path. Needs an active mesh with logical rules (`sharding.use_rules`).

    Args:
      x: [B, T, H]; weights, experts: [B, T, k]; valid: [B, T] real tokens.
      capacity_factor: > 0: slots per expert = ceil(cf * local copies / experts); <= 0: dropless.
    Returns:
      (y [B, T, H], share of real token copies dropped, a float32 scalar).
    """
    rules = dict(spmd.get_logical_axis_rules())
    axis = rules.get(axes.EXPERT)
    mesh = jax.sharding.get_abstract_mesh()
    if not isinstance(axis, str) or mesh.empty:
        raise ValueError(
            "moe_impl='ep' needs a mesh whose rules map the 'expert' logical axis to one mesh axis "
            "(the fsdp+ep preset); use moe_impl='grouped' otherwise."
        )
    batch = rules.get(axes.BATCH)
    batch_names = (batch,) if isinstance(batch, str) else tuple(batch or ())
    tokens, mask = P(batch, None, None), P(batch, None)
    experts_spec = P(axis, None, None)

    def body(xx, ww, ee, vv, wg, wu, wd):
        b, t, h = xx.shape
        args = (xx.reshape(b * t, h), ww.reshape(b * t, -1), ee.reshape(b * t, -1))
        if capacity_factor <= 0:
            y = _dispatch_dropless(*args, wg, wu, wd, axis=axis)
            return y.reshape(b, t, h), jnp.zeros((), jnp.float32)
        y, dropped, real = _dispatch_capacity(
            *args, vv.reshape(-1), wg, wu, wd, axis=axis, capacity_factor=capacity_factor
        )
        dropped, real = jax.lax.psum((dropped, real), batch_names)
        return y.reshape(b, t, h), dropped / jnp.maximum(real, 1.0)

    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(tokens, tokens, tokens, mask, experts_spec, experts_spec, experts_spec),
        out_specs=(tokens, P()),
    )(x, weights, experts, valid, w_gate, w_up, w_down)
