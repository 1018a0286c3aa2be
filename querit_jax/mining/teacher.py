"""Teacher scores for (query, candidate) pairs, and score-bin selection of training lists.

A teacher is any model `load_model` accepts: a reranker (its raw score) or an embedder (the inner
product of the query and document embeddings, i.e. cosine for normalised ones), batched and sharded
like every other inference here.
"""

import numpy as np

from querit_jax.eval.scoring import embedder_for, scorer_for
from querit_jax.models import api


class Teacher:
    def __init__(self, path: str, batch_size: int = 64, max_length: int | None = None):
        self.path = path
        self.model = api.load_model(path)  # CheckpointError with the path if it is not a model
        self.kind = "embedder" if self.model.spec.head.kind == "embed" else "reranker"
        if self.kind == "reranker":
            self.runner = scorer_for(self.model, batch_size=batch_size, max_length=max_length)
        else:
            self.runner = embedder_for(self.model, batch_size=batch_size, max_length=max_length)

    def describe(self) -> dict:
        spec = self.model.spec
        return {"path": self.path, "kind": self.kind, "family": spec.family, "head": spec.head.kind}

    def score(self, queries: list[str], documents: list[str]) -> np.ndarray:
        """One float score per (query, document) pair."""
        if not queries:
            return np.zeros((0,), np.float32)
        if self.kind == "reranker":
            return self.runner.score(self.model.params, queries, documents)
        uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
        ud, di = np.unique(np.asarray(documents, dtype=object), return_inverse=True)
        q = self.runner.embed(self.model.params, list(uq), "query")
        d = self.runner.embed(self.model.params, list(ud), "document")
        return np.einsum("nd,nd->n", q[qi], d[di]).astype(np.float32)


def choose_by_bins(
    scores: np.ndarray, count: int, bins: int, rng: np.random.Generator
) -> list[int]:
    """Indices of `count` candidates spread over `bins` equal-width teacher-score bins (round robin,
    random within a bin), so a training list sees easy, middling and hard negatives alike."""
    n = len(scores)
    if count >= n or bins <= 1:
        return list(range(min(count, n)))
    lo, hi = float(np.min(scores)), float(np.max(scores))
    edges = np.linspace(lo, hi, bins + 1)[1:-1]
    which = np.searchsorted(edges, scores, side="right")
    pools = [list(rng.permutation(np.flatnonzero(which == b))) for b in range(bins)]
    chosen: list[int] = []
    while len(chosen) < count:
        for pool in pools:
            if pool and len(chosen) < count:
                chosen.append(int(pool.pop()))
    return sorted(chosen)
