"""Batched, jitted inference: scoring (query, document) pairs and embedding texts.

Token sequences are sorted by length and cut into batches padded to a small set of length buckets
(a short last batch to the smallest quarter of a full one that holds it), so the forward pass
compiles for at most four row counts per bucket; results come back in input order. Batches are
sharded over the mesh's batch axes. Token budgets default to the ones stored with the model. With
`pack=True` several sequences share a row instead (`data.packing`: segment ids, per-pair pooling),
which computes the same outputs with far less padding.
"""

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from querit_jax import sharding
from querit_jax.data import packing
from querit_jax.data.tokenize import PairEncoder, TextEncoder, pad_batch
from querit_jax.errors import ConfigError, DataFormatError
from querit_jax.sharding import axes


def length_buckets(max_length: int, smallest: int = 32) -> tuple[int, ...]:
    """Powers of two from `smallest` up to max_length (always included)."""
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        n *= 2
    return (*out, max_length)


class BatchedRunner:
    """Runs `graphdef` + params over many token sequences; params can be swapped per call."""

    def __init__(
        self,
        spec,
        graphdef,
        tokenizer,
        mesh,
        logical_rules,
        batch_size: int,
        max_length: int | None,
        pack: bool = False,
        max_pairs: int = 16,
    ):
        self.spec, self.tokenizer, self.mesh, self.rules = spec, tokenizer, mesh, logical_rules
        self.graphdef = graphdef
        self.pack, self.max_pairs = pack, max_pairs
        self.max_length = max_length or spec.max_length
        try:
            spec.check_length(self.max_length)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        split = sharding.axis_size(mesh, dict(logical_rules)[axes.BATCH])
        self.batch_size = -(-batch_size // split) * split
        # Packed mode: rows of max_length tokens per call, a quarter of the pairs per call (each row
        # holds several pairs); longer rows come fewer per call (`packed_layout`).
        self.pack_rows = -(-max(1, batch_size // 4) // split) * split
        self._split = split
        self.buckets = length_buckets(self.max_length)
        self._sharding = NamedSharding(
            mesh, sharding.logical_to_spec((axes.BATCH, axes.LENGTH), logical_rules)
        )

        def forward(params, ids, seg, types):
            return nnx.merge(graphdef, params)(ids, seg, token_type_ids=types)[:, 0]

        self._forward = jax.jit(forward)

        def forward_packed(params, ids, seg, types, num_segments):
            model = nnx.merge(graphdef, params)
            return model(ids, seg, num_segments=num_segments, token_type_ids=types)

        self._forward_packed = jax.jit(forward_packed, static_argnums=(4,))

    def run(
        self, params, sequences: Sequence[Sequence[int]], types=None, progress=None
    ) -> np.ndarray:
        """Model outputs (float32) for each sequence, in input order: [n] scores or [n, H]
        embeddings."""
        if self.pack and len(sequences):
            return self._run_packed(params, sequences, types, progress)
        n = len(sequences)
        order = np.argsort([len(s) for s in sequences], kind="stable")
        sizes = self._call_sizes(self.batch_size)
        out = None
        with sharding.use_rules(self.mesh, self.rules):
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                length = next(b for b in self.buckets if b >= max(len(sequences[i]) for i in idx))
                # Filler rows (one pad token, segment 0, discarded) up to the call's size: a
                # short last call takes the smallest quarter of a full one that holds it.
                fill = next(size for size in sizes if size >= len(idx)) - len(idx)
                batch = [sequences[i] for i in idx] + [[self.pad_id]] * fill
                batch_types = None if types is None else [types[i] for i in idx] + [[0]] * fill
                ids, seg, tt = pad_batch(batch, length, self.pad_id, types=batch_types)
                seg[len(idx) :] = 0
                ids, seg, tt = (jax.device_put(a, self._sharding) for a in (ids, seg, tt))
                # Gathered from every process when the batch is sharded over several (a
                # collective: every process scores the same sequences in the same order).
                values = sharding.to_host(self._forward(params, ids, seg, tt)).astype(np.float32)
                if out is None:
                    out = np.zeros((n, *values.shape[1:]), np.float32)
                out[idx] = values[: len(idx)]
                if progress is not None:
                    progress.update(len(idx))
        return out if out is not None else np.zeros((0,), np.float32)

    def _call_sizes(self, full: int) -> list[int]:
        """Row counts a call may have: a quarter, half, three quarters or all of `full`, each a
        multiple of the device split (so a program compiles for at most four per shape)."""
        split = self._split
        return sorted({-(-full * j // 4 // split) * split for j in range(1, 5)})

    def packed_layout(self, sequences, types=None):
        """How `run` packs these sequences: (packing.PackedRows, [(first row, rows, padded rows)]
        for each forward call).

        Rows are the smallest length bucket that holds the longest sequence, times the multiple
        that packs them to a high real-token share (`packing.row_length_for`). A call takes as many
        rows as `pack_rows` rows of max_length tokens hold (a multiple of the device split); the
        last call is padded to the smallest quarter of a full call that holds its rows, so the
        forward compiles for at most four row counts per row length.
        """
        lengths = [len(s) for s in sequences]
        bucket = next(b for b in self.buckets if b >= max(lengths))
        length = packing.row_length_for(lengths, bucket, self.max_pairs)
        packed = packing.pack_sequences(sequences, length, self.max_pairs, self.pad_id, types)
        split = self._split
        per_call = max(split, self.pack_rows * self.max_length // length // split * split)
        sizes = self._call_sizes(per_call)
        calls = []
        for start in range(0, packed.placement.num_rows, per_call):
            k = min(per_call, packed.placement.num_rows - start)
            calls.append((start, k, next(size for size in sizes if size >= k)))
        return packed, calls

    def _run_packed(self, params, sequences, types, progress) -> np.ndarray:
        """`run` with several sequences per row (`data.packing`), laid out by `packed_layout`."""
        packed, calls = self.packed_layout(sequences, types)
        length = packed.input_ids.shape[1]
        outputs = []
        with sharding.use_rules(self.mesh, self.rules):
            for start, k, size in calls:
                rows = slice(start, start + k)
                arrays = []
                for a, fill in (
                    (packed.input_ids, self.pad_id),
                    (packed.segment_ids, 0),
                    (packed.token_type_ids, 0),
                ):
                    filled = np.full((size, length), fill, np.int32)  # extra rows: all padding
                    filled[:k] = a[rows]
                    arrays.append(jax.device_put(filled, self._sharding))
                values = self._forward_packed(params, *arrays, self.max_pairs)
                outputs.append(sharding.to_host(values).astype(np.float32)[:k])
                if progress is not None:
                    row = packed.placement.row
                    progress.update(int(((row >= start) & (row < start + k)).sum()))
        return packing.unpack(np.concatenate(outputs), packed.placement)


class Scorer(BatchedRunner):
    """Scores (query, document) pairs with a reranker."""

    def __init__(
        self,
        spec,
        graphdef,
        tokenizer,
        mesh,
        logical_rules,
        batch_size: int = 64,
        max_length: int | None = None,
        max_query_tokens: int | None = None,
        pack: bool = False,
        max_pairs: int = 16,
    ):
        super().__init__(
            spec, graphdef, tokenizer, mesh, logical_rules, batch_size, max_length, pack, max_pairs
        )
        self.encoder = PairEncoder(
            tokenizer,
            spec.template,
            self.max_length,
            max_query_tokens or spec.max_query_tokens,
            spec.backbone.vocab_size,
        )

    def score_tokens(self, params, sequences, types=None) -> np.ndarray:
        return self.run(params, sequences, types)

    def score(self, params, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        sequences, types = self.encoder.encode(queries, documents)
        return self.run(params, sequences, types)


class Embedder(BatchedRunner):
    """Embeds queries and documents with an embedder model ([n, H] float32)."""

    def __init__(
        self,
        spec,
        graphdef,
        tokenizer,
        mesh,
        logical_rules,
        batch_size: int = 128,
        max_length: int | None = None,
        pack: bool = False,
        max_pairs: int = 16,
    ):
        super().__init__(
            spec, graphdef, tokenizer, mesh, logical_rules, batch_size, max_length, pack, max_pairs
        )
        self.encoder = TextEncoder(
            tokenizer, spec.template, self.max_length, spec.backbone.vocab_size
        )

    def embed(self, params, texts: Sequence[str], role: str, progress=None) -> np.ndarray:
        if not len(texts):
            raise DataFormatError(f"Nothing to embed: the list of {role}s is empty.")
        return self.run(params, self.encoder(texts, role), progress=progress)


def scorer_for(model, **kwargs) -> Scorer:
    """A Scorer for a loaded reranker, on the mesh it was loaded onto."""
    from querit_jax.errors import CheckpointError

    if model.spec.head.kind == "embed":
        raise CheckpointError(
            f"{model.path} is an embedder, not a reranker; use it as a first stage (retrieve)."
        )
    return Scorer(
        model.spec, model.graphdef, model.tokenizer, model.mesh, model.logical_rules, **kwargs
    )


def embedder_for(model, **kwargs) -> Embedder:
    """An Embedder for a loaded embedder model, on the mesh it was loaded onto."""
    from querit_jax.errors import CheckpointError

    if model.spec.head.kind != "embed":
        raise CheckpointError(
            f"{model.path} is a reranker ({model.spec.head.kind} head), not an embedder."
        )
    return Embedder(
        model.spec, model.graphdef, model.tokenizer, model.mesh, model.logical_rules, **kwargs
    )
