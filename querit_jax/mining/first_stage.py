"""First-stage retrieval: BM25 or a dense embedder with exact sharded top-k, producing runs.

run = first_stage_run("bm25", dataset, top_k=100)                      # built-in unicode analyser
run = first_stage_run("path/to/embedder", dataset, top_k=100)          # any embedder checkpoint
"""

import numpy as np
from tqdm import tqdm

from querit_jax.data.beir import BeirDataset
from querit_jax.data.io import DataFormatError
from querit_jax.eval.metrics import Run
from querit_jax.eval.scoring import embedder_for
from querit_jax.mining.bm25 import BM25Retriever, analyzer_for
from querit_jax.mining.topk import ShardedCorpus


class DenseRetriever:
    """Encodes a corpus once with an embedder and answers queries by exact inner-product top-k."""

    def __init__(
        self,
        model,
        batch_size: int = 128,
        max_length: int | None = None,
        devices=None,
        block: int = 512,
        progress: bool = True,
    ):
        self.model = model
        self.embedder = embedder_for(model, batch_size=batch_size, max_length=max_length)
        self.devices, self.block, self.progress = devices, block, progress
        self.doc_ids: list[str] = []
        self.corpus: ShardedCorpus | None = None

    def index(self, doc_ids: list[str], texts: list[str]) -> None:
        if not doc_ids:
            raise DataFormatError("The corpus is empty: there is nothing to encode.")
        bar = tqdm(total=len(texts), desc="encoding corpus", unit="doc", disable=not self.progress)
        embeddings = self.embedder.embed(self.model.params, texts, "document", progress=bar)
        bar.close()
        self.doc_ids = list(doc_ids)
        self.corpus = ShardedCorpus(embeddings, self.devices, self.block)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(self.model.params, texts, "query")

    def search(self, queries: dict[str, str], top_k: int) -> Run:
        if self.corpus is None:
            raise RuntimeError("Call index() before search().")
        qids = list(queries)
        if not qids:
            return {}
        scores, rows = self.corpus.search(self.embed_queries([queries[q] for q in qids]), top_k)
        return {
            q: {self.doc_ids[r]: float(s) for s, r in zip(srow, rrow)}
            for q, srow, rrow in zip(qids, scores, rows)
        }


def first_stage_run(
    model: str,
    dataset: BeirDataset,
    top_k: int = 100,
    bm25_tokenizer: str = "unicode",
    batch_size: int = 128,
    max_length: int | None = None,
    progress: bool = True,
) -> Run:
    """A run for every query of `dataset` from `model`: "bm25" or an embedder path."""
    doc_ids = list(dataset.corpus)
    texts = [dataset.doc_text(d) for d in doc_ids]
    if model == "bm25":
        return BM25Retriever(doc_ids, texts, analyzer_for(bm25_tokenizer)).search_run(
            dataset.queries, top_k
        )
    from querit_jax.models import api

    retriever = DenseRetriever(api.load_model(model), batch_size, max_length, progress=progress)
    retriever.index(doc_ids, texts)
    return retriever.search(dataset.queries, top_k)
