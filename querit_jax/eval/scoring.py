"""Batched, jitted scoring of (query, document) pairs with any loaded model.

Pairs are tokenised once, sorted by length and cut into fixed-size batches padded to a small set of
length buckets, so the forward pass compiles once per bucket. Results come back in input order.
"""

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from querit_jax import sharding
from querit_jax.data.templates import PairEncoder, pad_batch
from querit_jax.sharding import axes


def length_buckets(max_length: int, smallest: int = 32) -> tuple[int, ...]:
    """Powers of two from `smallest` up to max_length (always included)."""
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        n *= 2
    return (*out, max_length)


class Scorer:
    """Scores pairs with `graphdef` + params on a mesh; params can be swapped per call (training eval).

    Token budgets default to the ones stored in the spec (what the model was trained with).
    """

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
    ):
        self.spec = spec
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.rules = logical_rules
        self.max_length = max_length or spec.max_length
        self.encoder = PairEncoder(
            tokenizer,
            spec.template,
            self.max_length,
            max_query_tokens or spec.max_query_tokens,
            spec.backbone.vocab_size,
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batch_split = sharding.axis_size(mesh, dict(logical_rules)[axes.BATCH])
        self.batch_size = -(-batch_size // batch_split) * batch_split
        self.buckets = length_buckets(self.max_length)
        self._in_sharding = NamedSharding(
            mesh, sharding.logical_to_spec((axes.BATCH, axes.LENGTH), logical_rules)
        )

        def forward(params, ids, seg):
            return nnx.merge(graphdef, params)(ids, seg)[:, 0]

        self._forward = jax.jit(forward)

    def score_tokens(self, params, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores already tokenised sequences; returns float32 scores in input order."""
        n = len(sequences)
        if n == 0:
            return np.zeros((0,), np.float32)
        order = np.argsort([len(s) for s in sequences], kind="stable")
        out = np.zeros((n,), np.float32)
        with sharding.use_rules(self.mesh, self.rules):
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                longest = max(len(sequences[i]) for i in idx)
                length = next(b for b in self.buckets if b >= longest)
                batch = [sequences[i] for i in idx]
                batch += [[self.pad_id]] * (self.batch_size - len(batch))  # filler rows, discarded
                ids, seg = pad_batch(batch, length, self.pad_id)
                seg[len(idx) :] = 0
                ids, seg = (jax.device_put(a, self._in_sharding) for a in (ids, seg))
                scores = np.asarray(jax.device_get(self._forward(params, ids, seg)))
                out[idx] = scores[: len(idx)]
        return out

    def score(self, params, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        return self.score_tokens(params, self.encoder(queries, documents))


def scorer_for(model, **kwargs) -> Scorer:
    """A Scorer for a `LoadedModel` on the mesh it was loaded onto."""
    return Scorer(
        model.spec, model.graphdef, model.tokenizer, model.mesh, model.logical_rules, **kwargs
    )
