"""First-stage retrieval behind one interface: `retriever.search(queries, k) -> run`.

`queries` maps query ids to texts; the run maps each query id to its (at most) k best documents,
{doc id: score}, best first. BM25 (`bm25`, any language through `analyzers`) and dense retrieval
(`dense`: an embedder's inner products with the exact sharded top-k of `topk`) implement it; mining
(candidates for synthetic queries), evaluation (the first stage that is reranked) and the
`retrieve` command use only this interface. Underneath, `search_rows` answers with corpus rows
(numbers) instead of ids: what corpus-scale mining uses with a `data.docstore`, so no list of every
id or text needs to be held. Building a retriever from a name ("bm25" or a model path) is
`querit_jax.loading.build_retriever` (in memory) or `loading.corpus_retriever` (a saved index).
"""

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from querit_jax.data.runs import Run

# rows [n] int64 and scores [n] float32 of one query's hits, best first (n <= k).
Hits = tuple[np.ndarray, np.ndarray]


class Retriever:
    """The interface: `search` over an indexed corpus whose rows `doc_ids` names."""

    name = "retriever"

    def __init__(self, doc_ids: Sequence[str] | Callable[[Sequence[int]], list[str]]):
        """`doc_ids`: every document id in row order, or a function rows -> ids (a docstore's)."""
        self._ids = doc_ids

    def doc_ids(self, rows: Sequence[int]) -> list[str]:
        if callable(self._ids):
            return self._ids(rows)
        return [self._ids[int(r)] for r in rows]

    def search_rows(self, texts: Sequence[str], k: int) -> list[Hits]:
        """Per query text: its (at most) k best corpus rows and their scores, best first."""
        raise NotImplementedError

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        qids = list(queries)
        hits = self.search_rows([queries[q] for q in qids], k) if qids else []
        return {
            q: dict(zip(self.doc_ids(rows), (float(s) for s in scores)))
            for q, (rows, scores) in zip(qids, hits)
        }

    def search_texts(self, texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """`search` for a list of query texts: one ranked [(doc id, score), ...] per text."""
        return [
            list(zip(self.doc_ids(rows), (float(s) for s in scores)))
            for rows, scores in self.search_rows(list(texts), k)
        ]
