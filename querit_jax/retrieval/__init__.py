"""First-stage retrieval behind one interface: `retriever.search(queries, k) -> run`.

`queries` maps query ids to texts; the run maps each query id to its (at most) k best documents,
{doc id: score}, best first. BM25 (`bm25`, any language through `analyzers`) and dense retrieval
(`dense`: an embedder's inner products with the exact sharded top-k of `topk`) implement it; mining
(candidates for synthetic queries), evaluation (the first stage that is reranked) and the
`retrieve` command use only this interface. Building a retriever from a name ("bm25" or a model
path) is `querit_jax.loading.build_retriever`.
"""

from collections.abc import Mapping, Sequence

from querit_jax.data.runs import Run


class Retriever:
    """The interface: `search` over an indexed corpus."""

    name = "retriever"

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        raise NotImplementedError

    def search_texts(self, texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """`search` for a list of query texts: one ranked [(doc id, score), ...] per text."""
        run = self.search({str(i): t for i, t in enumerate(texts)}, k)
        return [list(run.get(str(i), {}).items()) for i in range(len(texts))]
