"""BM25 first stage with bm25s (Lucene variant, k1=1.5, b=0.75: the BEIR/Pyserini default family).

Terms come from an analyser (`retrieval.analyzers`), so every language works.
"""

import logging
from collections.abc import Mapping, Sequence

import bm25s

from querit_jax.data.runs import Run
from querit_jax.retrieval import Retriever
from querit_jax.retrieval.analyzers import Analyzer

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at INFO


class BM25Retriever(Retriever):
    """Indexes a corpus once; answers queries with their top-k documents by BM25 score."""

    name = "bm25"

    def __init__(
        self,
        doc_ids: Sequence[str],
        doc_texts: Sequence[str],
        analyzer: Analyzer,
        k1: float = 1.5,
        b: float = 0.75,
    ):
        if not doc_ids:
            raise ValueError("BM25Retriever needs at least one document.")
        if len(doc_ids) != len(doc_texts):
            raise ValueError(f"{len(doc_ids)} document ids but {len(doc_texts)} texts.")
        self.doc_ids = list(doc_ids)
        self.analyzer = analyzer
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(analyzer(list(doc_texts)), show_progress=False)

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """Up to `k` documents per query with a positive score, best first (the order of tied
        scores is bm25s's, not guaranteed to follow document order); a query with no indexed term
        gets an empty ranking."""
        ids = list(queries)
        k = min(k, len(self.doc_ids))
        tokens = self.analyzer([queries[q] for q in ids])
        known = self._bm25.vocab_dict  # bm25s rejects a query without a known term
        run: Run = {q: {} for q in ids}
        todo = [i for i, t in enumerate(tokens) if any(tok in known for tok in t)]
        if todo:
            docs, scores = self._bm25.retrieve(
                [[tok for tok in tokens[i] if tok in known] for i in todo], k=k, show_progress=False
            )
            for row, i in enumerate(todo):
                run[ids[i]] = {
                    self.doc_ids[int(d)]: float(s) for d, s in zip(docs[row], scores[row]) if s > 0
                }
        return run
