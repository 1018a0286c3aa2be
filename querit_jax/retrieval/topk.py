"""Exact top-k by inner product over a corpus sharded across devices.

The corpus matrix is split into equal row shards (one per device, padded with masked rows) and each
shard into fixed-size blocks. Every device scans its blocks keeping a running top-k (earlier, i.e.
lower-index, candidates first, so `lax.top_k`'s lower-position-first rule breaks ties by document
index); the per-device results are laid side by side in device order and merged by one more top-k.
Scores are computed block by block with one fixed shape ([queries, block] per dot), so a score never
depends on how the corpus is sharded: results are bitwise equal to a single-device brute force.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from querit_jax import sharding

AXIS = "shard"


def block_dot(queries: jax.Array, block: jax.Array) -> jax.Array:
    """[Q, D] x [B, D] -> [Q, B] float32 scores (the one scoring kernel everything uses)."""
    return jnp.einsum("qd,bd->qb", queries, block, preferred_element_type=jnp.float32)


def all_scores(queries: jax.Array, corpus: jax.Array, block: int) -> jax.Array:
    """Every score [Q, N_padded] with the same per-block kernel (used as the brute-force reference)."""
    blocks = corpus.reshape(-1, block, corpus.shape[-1])
    out = jax.lax.map(lambda b: block_dot(queries, b), blocks)  # [nb, Q, B]
    return jnp.transpose(out, (1, 0, 2)).reshape(queries.shape[0], -1)


def _scan_top_k(queries, shard, k, block, offset, n_total):
    """Running top-k over the blocks of one shard; returns ([Q, k] scores, [Q, k] global indices)."""
    q = queries.shape[0]
    blocks = shard.reshape(-1, block, shard.shape[-1])
    init = (
        jnp.full((q, k), -jnp.inf, jnp.float32),
        jnp.full((q, k), jnp.iinfo(jnp.int32).max, jnp.int32),
    )
    init = jax.lax.pcast(init, (AXIS,), to="varying")  # the carry differs per shard

    def body(carry, xs):
        vals, idx = carry
        i, blk = xs
        gidx = offset + i * block + jnp.arange(block, dtype=jnp.int32)
        s = jnp.where(gidx[None, :] < n_total, block_dot(queries, blk), -jnp.inf)
        cat_v = jnp.concatenate([vals, s], axis=1)
        cat_i = jnp.concatenate([idx, jnp.broadcast_to(gidx, s.shape)], axis=1)
        top_v, pos = jax.lax.top_k(cat_v, k)
        return (top_v, jnp.take_along_axis(cat_i, pos, axis=1)), None

    (vals, idx), _ = jax.lax.scan(
        body, init, (jnp.arange(blocks.shape[0], dtype=jnp.int32), blocks)
    )
    return vals, idx


@functools.partial(jax.jit, static_argnames=("mesh", "k", "block", "per_shard", "n"))
def _sharded_top_k(queries, matrix, *, mesh, k, block, per_shard, n):
    """Top-k over `matrix` (an argument, never a constant baked into the program)."""
    local_k = min(k, per_shard)

    def local(q, shard):
        offset = jax.lax.axis_index(AXIS) * per_shard
        return _scan_top_k(q, shard, local_k, block, offset, n)

    vals, idx = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(AXIS, None)),
        out_specs=(P(None, AXIS), P(None, AXIS)),
    )(queries, matrix)
    top_v, pos = jax.lax.top_k(vals, k)  # shard order = index order: ties stay by lower index
    return top_v, jnp.take_along_axis(idx, pos, axis=1)


class ShardedCorpus:
    """A corpus embedding matrix placed across the devices of `mesh` for exact top-k search."""

    def __init__(self, embeddings: np.ndarray, devices=None, block: int = 512):
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(
                f"Corpus embeddings must be a non-empty [N, D] matrix, got shape {embeddings.shape}."
            )
        # This process's devices by default: a search is then local to the process (each process
        # may search its own queries); pass global devices for one index spanning every host.
        devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = Mesh(np.array(devices), (AXIS,))
        self.n, self.dim = embeddings.shape
        shards = len(devices)
        # The block depends on N alone, so every device count runs the same [Q, block] dots.
        self.block = min(block, self.n)
        per_shard = -(-self.n // (shards * self.block)) * self.block
        padded = np.zeros((per_shard * shards, self.dim), embeddings.dtype)
        padded[: self.n] = embeddings
        self.per_shard = per_shard
        self.matrix = jax.device_put(padded, NamedSharding(self.mesh, P(AXIS, None)))

    def _search(self, queries, k):
        return _sharded_top_k(
            queries,
            self.matrix,
            mesh=self.mesh,
            k=k,
            block=self.block,
            per_shard=self.per_shard,
            n=self.n,
        )

    def search(
        self, queries: np.ndarray, k: int, batch: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores [Q, k], corpus row indices [Q, k]) by inner product; k is capped at N."""
        k = min(k, self.n)
        out_v, out_i = [], []
        for start in range(0, len(queries), batch):
            q = np.asarray(queries[start : start + batch], self.matrix.dtype)
            rows = len(q)
            q = (
                np.concatenate([q, np.zeros((batch - rows, self.dim), q.dtype)])
                if rows < batch
                else q
            )
            v, i = self._search(jnp.asarray(q), k)
            out_v.append(sharding.to_host(v)[:rows])
            out_i.append(sharding.to_host(i)[:rows])
        return np.concatenate(out_v), np.concatenate(out_i)


def brute_force_top_k(
    queries: np.ndarray, corpus: np.ndarray, k: int, block: int, batch: int = 256
):
    """Single-device reference: every score with the same kernel, then a full sort (score, index)."""
    n = corpus.shape[0]
    padded = np.zeros((-(-n // block) * block, corpus.shape[1]), corpus.dtype)
    padded[:n] = corpus
    scores = []
    fn = jax.jit(all_scores, static_argnums=2)
    for start in range(0, len(queries), batch):
        q = queries[start : start + batch]
        rows = len(q)
        q = (
            np.concatenate([q, np.zeros((batch - rows, q.shape[1]), q.dtype)])
            if rows < batch
            else q
        )
        scores.append(np.asarray(fn(jnp.asarray(q), jnp.asarray(padded), block))[:rows, :n])
    s = np.concatenate(scores)
    order = np.lexsort((np.broadcast_to(np.arange(n), s.shape), -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, axis=1), order
