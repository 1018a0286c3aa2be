"""Building blocks shared by the decoder families: RMSNorm, rotary embeddings, SwiGLU MLP,
embedding.

Numerics follow transformers' Qwen3 modules exactly (`modeling_qwen3.py`): RMSNorm statistics in
float32 with the cast back to the input dtype *before* the scale multiply; rotary cos/sin computed
in float32 from `inv_freq = 1 / theta^(2i/d)` and cast to the activation dtype; half-split rotation.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from querit_jax.sharding import axes, shard

# Rematerialisation of one layer in the backward pass (`remat` in the model configs): "full" saves
# only the layer's input and recomputes everything; the dots policies also keep matmul outputs,
# which trades some of the memory saving for less recomputation (jax.checkpoint_policies).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_name(remat: bool | str) -> str | None:
    """Normalises a `remat` config value (False/"none", True/"full", or a policy name) to a policy
    name or None. Raises ValueError for an unknown name."""
    if remat in (False, None, "none", ""):
        return None
    name = "full" if remat is True else remat
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}; choose none, {', '.join(REMAT_POLICIES)}.")
    return name


def maybe_remat(fn, remat: bool | str):
    """`fn` (a function of a layer and its inputs) rematerialised with the configured policy."""
    name = remat_name(remat)
    return fn if name is None else nnx.remat(fn, policy=REMAT_POLICIES[name])


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """y = scale * (x / sqrt(mean(x^2) + eps)), statistics in float32."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis with a learned scale (HF name: `weight`)."""

    def __init__(self, size: int, eps: float, *, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((size,), param_dtype), out_sharding=(axes.NORM,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


def rope_inv_freq(head_dim: int, theta: float) -> jax.Array:
    """inv_freq[i] = 1 / theta^(2i / head_dim), float32, shape [head_dim // 2]."""
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.int32).astype(jnp.float32) / head_dim
    return 1.0 / (theta**exponent)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding with half-split pairs (x[i] pairs with x[i + d/2]).

    Args:
      x: [B, T, N, D] queries or keys.
      positions: [B, T] integer positions (restart at 0 for every packed segment).
    Returns:
      [B, T, N, D] in x's dtype.
    """
    inv_freq = rope_inv_freq(x.shape[-1], theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Embed(nnx.Module):
    """Token embedding table [V, H] (HF: `embed_tokens.weight`), also the tied output projection."""

    def __init__(
        self, vocab_size: int, hidden_size: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32
    ):
        init = nnx.initializers.normal(stddev=0.02)
        self.embedding = nnx.Param(
            init(rngs.params(), (vocab_size, hidden_size), param_dtype),
            out_sharding=(axes.VOCAB, axes.EMBED),
        )

    def __call__(self, ids: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(dtype)


class DenseGeneral(nnx.Module):
    """y = x @ kernel (+ bias) with a multi-axis kernel and logical axes per kernel dimension.

    `in_axes` is the number of trailing input dimensions contracted; kernels keep head axes separate
    (e.g. q_proj: [embed, heads, head_dim]) so tensor parallelism can split heads directly.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        logical: tuple[str, ...],
        *,
        rngs: nnx.Rngs,
        use_bias: bool = False,
        param_dtype=jnp.float32,
        stddev: float = 0.02,
    ):
        self.in_ndim = len(in_shape)
        init = nnx.initializers.normal(stddev=stddev)
        self.kernel = nnx.Param(
            init(rngs.params(), in_shape + out_shape, param_dtype), out_sharding=logical
        )
        self.bias = (
            nnx.Param(jnp.zeros(out_shape, param_dtype), out_sharding=logical[self.in_ndim :])
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(x.dtype)
        contract = (tuple(range(x.ndim - self.in_ndim, x.ndim)), tuple(range(self.in_ndim)))
        y = jax.lax.dot_general(x, kernel, (contract, ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)), the Qwen3 MLP (HF names gate_proj, up_proj, down_proj)."""

    def __init__(self, hidden: int, intermediate: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.gate_proj = DenseGeneral(
            (hidden,), (intermediate,), (axes.EMBED, axes.MLP), rngs=rngs, param_dtype=param_dtype
        )
        self.up_proj = DenseGeneral(
            (hidden,), (intermediate,), (axes.EMBED, axes.MLP), rngs=rngs, param_dtype=param_dtype
        )
        self.down_proj = DenseGeneral(
            (intermediate,), (hidden,), (axes.MLP, axes.EMBED), rngs=rngs, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)  # [B, T, I]
        h = shard(h, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))
        return self.down_proj(h)


def maybe_checkpoint(fn, remat: bool | str):
    """`fn` (a pure function of arrays) rematerialised with the configured policy; the scanned layer
    body's counterpart of `maybe_remat` (same policies, so the same numbers)."""
    name = remat_name(remat)
    return (
        fn if name is None else jax.checkpoint(fn, policy=REMAT_POLICIES[name], prevent_cse=False)
    )


def _identical_runs(layers) -> list[tuple[object, list]]:
    """Maximal runs of consecutive layers with one structure, as (graphdef, [layers]). A dense model
    is one run; a Qwen3-MoE with dense layers (mlp_only_layers, decoder_sparse_step) has several."""
    runs = []
    for layer in layers:
        graphdef = nnx.graphdef(layer)
        if runs and runs[-1][0] == graphdef:
            runs[-1][1].append(layer)
        else:
            runs.append((graphdef, [layer]))
    return runs


def _scan_run(graphdef, run: list, call, x, remat):
    """One run of identical layers through `jax.lax.scan`: their states stacked on a new leading
    axis
    at trace time (the per-layer parameters keep their paths; gradients flow back through the
    stack)."""
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(lyr) for lyr in run])

    def body(h, state):
        return call(nnx.merge(graphdef, state), h)

    x, outs = jax.lax.scan(maybe_checkpoint(body, remat), x, stacked)
    return x, [jax.tree.map(lambda a, i=i: a[i], outs) for i in range(len(run))]


def run_layers(layers, call, x: jax.Array, *, remat: bool | str, scan: bool):
    """Applies `call(layer, x) -> (x, out)` layer after layer; returns (x, [out of each layer]).

    With `scan`, each maximal run of identical consecutive layers is traced and compiled once and
    run with `jax.lax.scan` (compile time flat in depth), at the cost of one stacked copy of that
    run's weights during the step; a run of one layer is called directly. Numbers equal the loop's.
    """
    if not scan:
        call_layer = maybe_remat(call, remat)
        outs = []
        for layer in layers:
            x, out = call_layer(layer, x)
            outs.append(out)
        return x, outs
    outs = []
    for graphdef, run in _identical_runs(layers):
        if len(run) == 1:
            x, out = maybe_remat(call, remat)(run[0], x)
            run_outs = [out]
        else:
            x, run_outs = _scan_run(graphdef, run, call, x, remat)
        outs.extend(run_outs)
    return x, outs
