"""Dense first stage: a corpus embedded once, queries answered by exact inner-product top-k.

The embedding function is given (`embed(texts, role, progress=None) -> [n, D] float32`, role "query"
or "document"), so this module needs no model code: `querit_jax.loading.build_retriever` binds an
embedder checkpoint's runner to it. The top-k is `topk.ShardedCorpus` (exact, sharded over devices).
"""

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from querit_jax.data.runs import Run
from querit_jax.errors import DataFormatError
from querit_jax.retrieval import Retriever
from querit_jax.retrieval.topk import ShardedCorpus

EmbedFn = Callable[..., np.ndarray]


class DenseRetriever(Retriever):
    """Exact inner-product retrieval over a corpus embedded with `embed`."""

    name = "dense"

    def __init__(self, embed: EmbedFn, devices=None, block: int = 512, progress: bool = True):
        self.embed = embed
        self.devices, self.block, self.progress = devices, block, progress
        self.doc_ids: list[str] = []
        self.corpus: ShardedCorpus | None = None

    def index(self, doc_ids: Sequence[str], texts: Sequence[str]) -> "DenseRetriever":
        if not doc_ids:
            raise DataFormatError("The corpus is empty: there is nothing to encode.")
        bar = tqdm(total=len(texts), desc="encoding corpus", unit="doc", disable=not self.progress)
        embeddings = self.embed(list(texts), "document", progress=bar)
        bar.close()
        self.doc_ids = list(doc_ids)
        self.corpus = ShardedCorpus(embeddings, self.devices, self.block)
        return self

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(list(texts), "query")

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        if self.corpus is None:
            raise RuntimeError("Call index() before search().")
        qids = list(queries)
        if not qids:
            return {}
        scores, rows = self.corpus.search(self.embed_queries([queries[q] for q in qids]), k)
        return {
            q: {self.doc_ids[r]: float(s) for s, r in zip(srow, rrow)}
            for q, srow, rrow in zip(qids, scores, rows)
        }
