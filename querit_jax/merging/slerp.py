"""Spherical interpolation of parameter tensors: mergekit's SLERP and Multi-SLERP in pure jnp.

`slerp` follows mergekit's `merge_methods/slerp.py` (notes/anchors-and-parity.md D.3): the two
tensors are normalised as whole flat vectors (only when their norm exceeds eps), their dot product
decides the branch — |dot| > 0.9995 means nearly (anti)parallel and the tensors are interpolated
linearly — otherwise the sine weights of the angle are applied to the *original* tensors, so norms
are not re-projected onto the sphere. Everything is computed in float32 and cast back by the caller.

`multislerp` follows mergekit's `merge_methods/multislerp.py` (the spherical barycentre of
https://goddard.blog/posts/multislerp-wow-what-a-cool-idea): unit directions are averaged with the
weights, the points are projected to the tangent space at that mean, averaged there, mapped back by
the exponential map and rescaled by the weighted mean norm; optionally relative to a base tensor
(task vectors).

Norms and dot products are full reductions (`jnp.sum` of an elementwise product in float32, the same
number as `jnp.vdot` on the flattened tensors without a reshape), so on sharded arrays under `jit`
they become a local reduction plus one all-reduce and no tensor is gathered on one device.
"""

import jax
import jax.numpy as jnp

DOT_THRESHOLD = 0.9995  # mergekit's colinearity threshold ("not recommended to alter")
EPS = 1e-8  # a tensor is normalised only when its norm exceeds this


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """Frobenius inner product in float32 (a cross-shard reduction on sharded inputs)."""
    return jnp.sum(a.astype(jnp.float32) * b.astype(jnp.float32))


def _safe(norm: jax.Array, eps: float) -> jax.Array:
    """A norm to divide by: mergekit normalises a tensor only when its norm exceeds eps."""
    return jnp.where(norm > eps, norm, 1.0)


def slerp_coefficients(
    d00, d11, d01, t, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The scalars of SLERP from <v0,v0>, <v1,v1>, <v0,v1>: (linear, s0, s1).

    The result is s0 * v0 + s1 * v1, or the lerp where `linear`. Elementwise in its arguments, so
    arrays of per-expert dot products give per-expert coefficients.
    """
    n0, n1 = jnp.sqrt(d00), jnp.sqrt(d11)
    cos = d01 / (_safe(n0, eps) * _safe(n1, eps))  # = <u0, u1> of the (normalised) tensors
    t = jnp.asarray(t, jnp.float32)
    linear = jnp.abs(cos) > dot_threshold
    # On the linear branch the angle is replaced by a harmless one so that no 0/0 is evaluated.
    theta0 = jnp.arccos(jnp.where(linear, 0.0, cos))
    sin0 = jnp.where(linear, 1.0, jnp.sin(theta0))
    return linear, jnp.sin(theta0 - theta0 * t) / sin0, jnp.sin(theta0 * t) / sin0


def slerp_weights(
    v0: jax.Array, v1: jax.Array, t, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(linear, s0, s1) of SLERP between two tensors: three reductions, then scalar math.

    `slerp_apply` then makes one elementwise pass. Large-model merges run the three reductions as
    separate jitted calls (see merger.py): XLA:CPU materialises a float32 copy of a bf16 input that
    several reductions in one computation share, and these tensors can be a GB.
    """
    return slerp_coefficients(dot(v0, v0), dot(v1, v1), dot(v0, v1), t, dot_threshold, eps)


def slerp_apply(v0: jax.Array, v1: jax.Array, t, linear, s0, s1) -> jax.Array:
    """The elementwise half of SLERP, in float32: the sine weights on the originals, or the lerp."""
    a, b = v0.astype(jnp.float32), v1.astype(jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    # (1 - t) a + t b written as a + t (b - a): the same number up to rounding, and exactly `a` when
    # both inputs are equal, so merging a model with itself returns it bit for bit.
    lerp = jnp.where(t == 1.0, b, a + t * (b - a))
    return jnp.where(linear, lerp, s0 * a + s1 * b)


def slerp(
    v0: jax.Array, v1: jax.Array, t, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS
) -> tuple[jax.Array, jax.Array]:
    """SLERP between two tensors of the same shape, mergekit's formula, in float32.

    Args:
      v0: the base tensor (returned at t=0), any float dtype.
      v1: the other tensor (returned at t=1), same shape.
      t: interpolation factor in [0, 1] (a Python float or a traced scalar).
    Returns:
      (result, linear): the float32 result, and a bool scalar that is True where the nearly-parallel
      linear branch was taken.
    """
    linear, s0, s1 = slerp_weights(v0, v1, t, dot_threshold, eps)
    return slerp_apply(v0, v1, t, linear, s0, s1), linear


def multislerp(
    tensors: jax.Array,
    weights: jax.Array,
    base: jax.Array | None = None,
    normalize_weights: bool = True,
    eps: float = EPS,
) -> tuple[jax.Array, jax.Array]:
    """Weighted spherical barycentre of N tensors (mergekit's Multi-SLERP), in float32.

    Args:
      tensors: [N, ...] the stacked tensors (N >= 1). weights: [N] their weights. base: optional
      [...] origin; the tensors' differences to it (task vectors) are interpolated and
        the base is added back.
    Returns:
      (result, degenerate): the float32 [...] result, and a bool scalar that is True where the
      weighted mean direction vanished (two inputs: mergekit falls back to the weighted linear sum;
      more inputs are NaN there and the caller reports an error).
    """
    x = tensors.astype(jnp.float32)
    if base is not None:
        x = x - base.astype(jnp.float32)[None]
    w = jnp.asarray(weights, jnp.float32)
    if normalize_weights:
        w = w / jnp.sum(w)
    bw = w.reshape((-1,) + (1,) * (x.ndim - 1))  # [N, 1, ...]
    axes = tuple(range(1, x.ndim))
    norms = jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))  # [N, 1, ...]
    units = x / (norms + eps)
    mean = jnp.sum(units * bw, axis=0)
    mean_norm = jnp.sqrt(dot(mean, mean))
    degenerate = mean_norm < eps
    mean = mean / jnp.where(degenerate, 1.0, mean_norm)
    dots = jnp.sum(units * mean[None], axis=axes, keepdims=True)
    tangent = jnp.sum((units - dots * mean[None]) * bw, axis=0)
    tangent_norm = jnp.sqrt(dot(tangent, tangent)) + eps
    on_sphere = mean * jnp.cos(tangent_norm) + tangent * (jnp.sin(tangent_norm) / tangent_norm)
    result = on_sphere * jnp.sum(norms.reshape(-1) * w)
    if x.shape[0] == 2:
        result = jnp.where(degenerate, jnp.sum(x * bw, axis=0), result)
    if base is not None:
        result = result + base.astype(jnp.float32)
    return result, degenerate
