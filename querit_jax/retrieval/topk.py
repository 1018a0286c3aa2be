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
from querit_jax.distributed import gather_ints

AXIS = "shard"
# A collective search waits for every process to bring its queries (a slow one may still be
# generating them): through the coordination service, for up to this long.
COLLECTIVE_WAIT_S = 24 * 3600.0


def block_dot(queries: jax.Array, block: jax.Array) -> jax.Array:
    """[Q, D] x [B, D] -> [Q, B] float32 scores (the one scoring kernel everything uses)."""
    return jnp.einsum("qd,bd->qb", queries, block, preferred_element_type=jnp.float32)


def all_scores(queries: jax.Array, corpus: jax.Array, block: int) -> jax.Array:
    """Every score [Q, N_padded] with the same per-block kernel (used as the brute-force
    reference)."""
    blocks = corpus.reshape(-1, block, corpus.shape[-1])
    out = jax.lax.map(lambda b: block_dot(queries, b), blocks)  # [nb, Q, B]
    return jnp.transpose(out, (1, 0, 2)).reshape(queries.shape[0], -1)


def _scan_top_k(queries, shard, k, block, offset, n_total):
    """Running top-k over the blocks of one shard; returns ([Q, k] scores, [Q, k] global
    indices)."""
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


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(shard: jax.Array, rows: jax.Array, offset) -> jax.Array:
    """`shard` with `rows` written from row `offset` on (in place: the shard is donated)."""
    return jax.lax.dynamic_update_slice(shard, rows, (offset, 0))


class ShardedCorpus:
    """A corpus embedding matrix placed across the devices of `mesh` for exact top-k search.

    Rows are written straight into per-device shards (`from_chunks`), chunk by chunk: the host
    never holds the whole matrix, nor a padded copy of it.
    """

    def __init__(self, embeddings: np.ndarray | None, devices=None, block: int = 512, **shape):
        if embeddings is not None:
            embeddings = np.asarray(embeddings)
            if embeddings.ndim != 2 or embeddings.shape[0] == 0:
                raise ValueError(
                    "Corpus embeddings must be a non-empty [N, D] matrix, got shape "
                    f"{embeddings.shape}."
                )
            shape = dict(n=embeddings.shape[0], dim=embeddings.shape[1], dtype=embeddings.dtype)
        n, dim = shape["n"], shape["dim"]
        if n < 1:
            raise ValueError(f"Corpus embeddings must be a non-empty [N, D] matrix, got N={n}.")
        # This process's devices by default: a search is then local to the process (each process
        # searches its own queries). Devices of several processes: each holds its rows only, and a
        # search is collective (`search`).
        devices = list(devices) if devices is not None else jax.local_devices()
        self.devices = devices
        self.mesh = Mesh(np.array(devices), (AXIS,))
        me = jax.process_index()
        self.spans_processes = any(d.process_index != me for d in devices)
        self.n, self.dim, self.dtype = n, dim, np.dtype(shape.get("dtype", np.float32))
        # The block depends on N alone, so every device count runs the same [Q, block] dots.
        self.block = min(block, self.n)
        self.per_shard = -(-self.n // (len(devices) * self.block)) * self.block
        self._shards = {
            j: jnp.zeros((self.per_shard, dim), self.dtype, device=d)
            for j, d in enumerate(devices)
            if d.process_index == me
        }  # this process's devices only; padding rows stay zero and are masked in the search
        self.local = sorted(self._shards)  # their positions in `devices`
        self._filled = 0
        self.matrix = None
        if embeddings is not None:
            self.add(embeddings)
            self.finish()

    @classmethod
    def from_chunks(
        cls, chunks, n: int, dim: int, devices=None, block: int = 512, dtype=np.float32
    ):
        """Builds the index from row chunks [n_i, dim] (in row order) adding up to `n` rows."""
        corpus = cls(None, devices, block, n=n, dim=dim, dtype=dtype)
        for chunk in chunks:
            corpus.add(chunk)
        return corpus.finish()

    @classmethod
    def from_parts(
        cls, read_part, part_size: int, n: int, dim: int, devices=None, block: int = 512,
        dtype=np.float32,
    ):  # fmt: skip
        """Builds the index from saved parts (part j: rows [j * part_size, (j + 1) * part_size)),
        reading only the parts whose rows this process's devices hold (`read_part(j)`)."""
        corpus = cls(None, devices, block, n=n, dim=dim, dtype=dtype)
        for j in corpus.parts_needed(part_size):
            part = np.asarray(read_part(j))
            want = (min(part_size, n - j * part_size), dim)
            if part.shape != want:
                raise ValueError(f"Part {j} has shape {part.shape}, not {want}.")
            corpus._write(j * part_size, part)
        corpus._filled = n
        return corpus.finish()

    def local_rows(self) -> list[tuple[int, int]]:
        """The row ranges [start, stop) this process's devices hold, in device order."""
        ranges = [(j * self.per_shard, min((j + 1) * self.per_shard, self.n)) for j in self.local]
        return [(a, b) for a, b in ranges if a < b]

    def parts_needed(self, part_size: int) -> list[int]:
        """The saved parts (of `part_size` rows) that overlap this process's rows."""
        parts = (range(a // part_size, (b - 1) // part_size + 1) for a, b in self.local_rows())
        return sorted({j for span in parts for j in span})

    def add(self, rows: np.ndarray) -> None:
        """Writes the next rows (in row order) into the shards of this process's devices."""
        rows = np.asarray(rows, self.dtype)
        if self._filled + len(rows) > self.n:
            raise ValueError(f"More than the announced {self.n} corpus rows.")
        self._write(self._filled, rows)
        self._filled += len(rows)

    def _write(self, start: int, rows: np.ndarray) -> None:
        """Writes `rows` from corpus row `start` on (rows of other processes' devices: skipped)."""
        rows = np.asarray(rows, self.dtype)
        while len(rows):
            shard, offset = divmod(start, self.per_shard)
            take = min(len(rows), self.per_shard - offset)
            if shard in self._shards:
                piece = jax.device_put(rows[:take], self.devices[shard])
                self._shards[shard] = _write_rows(self._shards[shard], piece, offset)
            start += take
            rows = rows[take:]

    def finish(self) -> "ShardedCorpus":
        if self._filled != self.n:
            raise ValueError(f"{self._filled} corpus rows written, {self.n} announced.")
        self.matrix = jax.make_array_from_single_device_arrays(
            (self.per_shard * len(self.devices), self.dim),
            NamedSharding(self.mesh, P(AXIS, None)),
            [self._shards[j] for j in sorted(self._shards)],
        )
        self._shards = {}
        return self

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
        """Top-k (scores [Q, k], corpus row indices [Q, k]) by inner product; k is capped at N.

        An index over several processes' devices is searched collectively: every process calls
        `search` (with its own queries, maybe none) the same number of times, with the same `k`;
        each batch searches every process's queries at once and each process keeps its own rows.
        """
        k = min(k, self.n)
        queries = np.asarray(queries, self.dtype).reshape(-1, self.dim)
        count = len(queries)
        if self.spans_processes:  # the most queries any process has, once all have arrived
            count = max(gather_ints("dense-search", count, timeout_s=COLLECTIVE_WAIT_S))
        out_v, out_i = [np.zeros((0, k), np.float32)], [np.zeros((0, k), np.int32)]
        for start in range(0, count, batch):
            q = queries[start : start + batch]
            rows = len(q)
            q = np.concatenate([q, np.zeros((batch - rows, self.dim), q.dtype)])
            if self.spans_processes:
                v, i = self._search_together(q, k)
            else:
                v, i = (sharding.to_host(x) for x in self._search(jnp.asarray(q), k))
            out_v.append(v[:rows])
            out_i.append(i[:rows])
        return np.concatenate(out_v), np.concatenate(out_i)

    def _search_together(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """One batch of every process's queries against the whole index; this process's rows."""
        from jax.experimental import multihost_utils

        together = np.asarray(multihost_utils.process_allgather(q)).reshape(-1, self.dim)
        placed = jax.make_array_from_callback(
            together.shape, NamedSharding(self.mesh, P()), lambda index: together[index]
        )
        v, i = (sharding.to_host(x) for x in self._search(placed, k))  # collective gathers
        # process_allgather stacks the processes in the order of jax.devices() split into one row
        # per process: this process's block is the row whose devices are its own.
        rows = np.array(jax.devices()).reshape(jax.process_count(), -1)[:, 0]
        at = [d.process_index for d in rows].index(jax.process_index())
        mine = slice(at * len(q), (at + 1) * len(q))
        return v[mine], i[mine]


def brute_force_top_k(
    queries: np.ndarray, corpus: np.ndarray, k: int, block: int, batch: int = 256
):
    """Single-device reference: every score with the same kernel, then a full sort (score,
    index)."""
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
