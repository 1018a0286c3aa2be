"""Teacher scores for (query, candidate) pairs.

A teacher is any loaded model: a reranker (its raw score) or an embedder (the inner product of the
query and document embeddings, i.e. cosine for normalised ones), batched and sharded like every other
inference here. `querit_jax.loading.load_teacher` builds one from a model location.
"""

import numpy as np

from querit_jax.inference.runners import embedder_for, scorer_for
from querit_jax.models.spec import LoadedModel


class Teacher:
    def __init__(
        self,
        model: LoadedModel,
        batch_size: int = 64,
        max_length: int | None = None,
        path: str | None = None,
    ):
        self.model, self.path = model, path or model.path  # path: as the user gave it
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
