"""BM25 first stage with bm25s (Lucene variant, k1=1.5, b=0.75: the BEIR/Pyserini default family).

Terms come from an analyser (`retrieval.analyzers`), so every language works. The index is bm25s's
eager sparse matrix: per (term, document) the precomputed Lucene score
idf(t) * tf / (tf + k1 (1 - b + b |d| / avgdl)), stored by term (CSC: `indptr`, `indices`,
`data`), so a query's scores are sums of its terms' postings. bm25s's own `index` wants every
document's token list in memory at once; `IndexBuilder` streams instead:

  1. each chunk of texts is analysed, its terms mapped to ids (a growing vocabulary) and counted per
     document; the chunk's (document, term, tf) postings are kept as compact arrays (or spilled to a
     local scratch directory), while document lengths and frequencies accumulate;
  2. with N, avgdl and df known, every chunk's postings get their score, computed as bm25s does it
     (float64, stored as float32), and are placed in their term's column by a counting sort, so
     columns list documents in row order, as bm25s's do.

The result is identical to `bm25s.BM25().index(tokens)` up to the vocabulary's numbering (a test
checks scores and rankings). `save_index` writes it in bm25s's own format (its file names and
params) behind a marker, so `bm25s.BM25.load(dir, mmap=True)` opens it memory-mapped; every host of
a pod shares the one index saved with the mining output (through a local copy per host).
"""

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from querit_jax import storage
from querit_jax.data.io import read_json
from querit_jax.errors import DataFormatError
from querit_jax.retrieval import Hits, Retriever
from querit_jax.retrieval.analyzers import Analyzer

if TYPE_CHECKING:
    import bm25s

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at INFO

MARKER = "bm25.json"
K1, B = 1.5, 0.75


class IndexBuilder:
    """Streams texts (in chunks, row order) into bm25s's sparse score matrix."""

    def __init__(self, analyzer: Analyzer, k1: float = K1, b: float = B, scratch: str = ""):
        """`scratch`: a local directory for the chunks' postings (else they stay in memory)."""
        self.analyzer, self.k1, self.b, self.scratch = analyzer, k1, b, scratch
        self.vocab: dict[str, int] = {}
        self.df = np.zeros(0, np.int64)
        self.lengths: list[np.ndarray] = []  # int32 per chunk: terms per document
        self.chunks: list = []  # per chunk (docs, terms, tfs) arrays or the scratch file stem
        self.n = 0

    def add(self, texts: Sequence[str]) -> None:
        tokens = self.analyzer(list(texts))
        vocab = self.vocab
        lens = np.fromiter((len(t) for t in tokens), np.int64, len(tokens))
        ids = np.fromiter(
            (vocab.setdefault(t, len(vocab)) for doc in tokens for t in doc),
            np.int64,
            int(lens.sum()),
        )
        doc = np.repeat(np.arange(len(tokens), dtype=np.int64), lens)
        keys, tf = np.unique((doc << 32) | ids, return_counts=True)  # by document, then term
        docs, terms = (keys >> 32).astype(np.int32), (keys & 0xFFFFFFFF).astype(np.int32)
        if len(vocab) > len(self.df):
            self.df = np.concatenate([self.df, np.zeros(len(vocab) - len(self.df), np.int64)])
        self.df += np.bincount(terms, minlength=len(self.df))
        entry = (docs + np.int32(self.n), terms, tf.astype(np.float32))
        if self.scratch:
            stem = storage.join(self.scratch, f"chunk-{len(self.chunks):06d}")
            for name, a in zip(("docs", "terms", "tfs"), entry):
                storage.save_array(f"{stem}.{name}.npy", a)
            entry = stem
        self.chunks.append(entry)
        self.lengths.append(lens.astype(np.int32))
        self.n += len(tokens)

    def _chunk(self, entry):
        if isinstance(entry, str):
            return tuple(storage.load_array(f"{entry}.{n}.npy") for n in ("docs", "terms", "tfs"))
        return entry

    def finish(self) -> dict:
        """{"data" [P] float32, "indices" [P] int32, "indptr" [V + 2] int64, "num_docs", "vocab"}:
        the matrix, with bm25s's empty term "" as the last (empty) column."""
        if not self.n:
            raise DataFormatError("BM25 needs at least one document.")
        lengths = np.concatenate(self.lengths)
        avgdl = lengths.mean()  # float64, as bm25s
        # Lucene idf, float64 like bm25s's math.log, stored as float32.
        df = self.df.astype(np.float64)
        idf = np.log(1 + (self.n - df + 0.5) / (df + 0.5)).astype(np.float32)
        self.vocab.setdefault("", len(self.vocab))
        indptr = np.zeros(len(self.vocab) + 1, np.int64)
        indptr[1 : len(self.df) + 1] = np.cumsum(self.df)
        indptr[len(self.df) + 1 :] = indptr[len(self.df)]
        data = np.empty(int(indptr[-1]), np.float32)
        indices = np.empty(int(indptr[-1]), np.int32)
        cursor = indptr[:-1].copy()
        for entry in self.chunks:
            docs, terms, tfs = self._chunk(entry)
            dl = lengths[docs].astype(np.float64)
            tfc = tfs / (self.k1 * ((1 - self.b) + self.b * dl / avgdl) + tfs)
            scores = (idf[terms] * tfc).astype(np.float32)
            order = np.argsort(terms, kind="stable")
            sorted_terms = terms[order]
            counts = np.bincount(sorted_terms, minlength=len(cursor))
            group_start = np.cumsum(counts) - counts
            pos = cursor[sorted_terms] + (np.arange(len(order)) - group_start[sorted_terms])
            data[pos], indices[pos] = scores[order], docs[order]
            cursor += counts
        self.chunks.clear()
        return {
            "data": data,
            "indices": indices,
            "indptr": indptr,
            "num_docs": self.n,
            "vocab": self.vocab,
        }


def _bm25s(matrix: dict, k1: float, b: float) -> "bm25s.BM25":
    import bm25s  # imported when used: importing it runs a JAX op (starts a backend)

    model = bm25s.BM25(k1=k1, b=b)
    model.scores = {k: matrix[k] for k in ("data", "indices", "indptr", "num_docs")}
    model.vocab_dict = matrix["vocab"]
    model.unique_token_ids_set = set(model.vocab_dict.values())
    model.nonoccurrence_array = None  # only BM25L / BM25+ have one
    return model


def _params(k1: float, b: float, num_docs: int) -> dict:
    """bm25s's params.index.json for an index built by `IndexBuilder`."""
    import bm25s

    return dict(
        k1=k1, b=b, delta=0.5, method="lucene", idf_method="lucene", dtype="float32",
        int_dtype="int32", num_docs=num_docs, version=bm25s.__version__, backend="numpy",
    )  # fmt: skip


def build_index(
    chunks: Iterable[Sequence[str]],
    analyzer: Analyzer,
    location: str,
    describe: dict,
    k1: float = K1,
    b: float = B,
    log=None,
) -> None:
    """Streams text chunks (row order) into a saved bm25s index at `location` (local or gs://);
    `describe` (analyser, corpus hash, ...) goes into the marker, written last."""
    with storage.temp_dir() as scratch:
        builder = IndexBuilder(analyzer, k1, b, scratch)
        for texts in chunks:
            builder.add(texts)
            if log:
                log(f"bm25: {builder.n} documents analysed, {len(builder.vocab)} terms")
        matrix = builder.finish()
    writer = storage.DirectoryWriter(location, MARKER)
    for name in ("data", "indices", "indptr"):
        storage.save_array(storage.join(writer.staging, f"{name}.csc.index.npy"), matrix[name])
    storage.write_text(
        storage.join(writer.staging, "vocab.index.json"),
        json.dumps(matrix["vocab"], ensure_ascii=False),
    )
    storage.write_text(
        storage.join(writer.staging, "params.index.json"),
        json.dumps(_params(k1, b, matrix["num_docs"]), indent=2),
    )
    marker = {**describe, "documents": matrix["num_docs"], "terms": len(matrix["vocab"])}
    writer.commit(json.dumps({**marker, "postings": len(matrix["data"])}, indent=2) + "\n")


def read_marker(location: str) -> dict | None:
    path = storage.join(location, MARKER)
    return read_json(path) if storage.exists(path) else None


class BM25Retriever(Retriever):
    """BM25 over a corpus: indexed in memory from its texts, or a saved index (`load`)."""

    name = "bm25"

    def __init__(
        self,
        doc_ids: Sequence[str] | Callable,
        doc_texts: Sequence[str] | None,
        analyzer: Analyzer,
        k1: float = K1,
        b: float = B,
        model: "bm25s.BM25 | None" = None,
        chunk: int = 20_000,
    ):
        super().__init__(doc_ids if callable(doc_ids) else list(doc_ids))
        self.analyzer = analyzer
        if model is None:
            if not doc_ids or doc_texts is None:
                raise ValueError("BM25Retriever needs at least one document.")
            if len(doc_ids) != len(doc_texts):
                raise ValueError(f"{len(doc_ids)} document ids but {len(doc_texts)} texts.")
            builder = IndexBuilder(analyzer, k1, b)
            for start in range(0, len(doc_texts), chunk):
                builder.add(doc_texts[start : start + chunk])
            model = _bm25s(builder.finish(), k1, b)
        self._bm25 = model
        self.num_docs = int(model.scores["num_docs"])

    @classmethod
    def load(cls, location: str, analyzer: Analyzer, doc_ids, version: str = "") -> "BM25Retriever":
        """A saved index, memory-mapped (a remote one through a local copy; `version` keys it)."""
        local = storage.local_copy(location, version=version)
        import bm25s

        return cls(doc_ids, None, analyzer, model=bm25s.BM25.load(local, mmap=True))

    def search_rows(self, texts: Sequence[str], k: int) -> list[Hits]:
        """Up to `k` documents per query with a positive score, best first (the order of tied
        scores is bm25s's, not guaranteed to follow document order); a query with no indexed term
        gets an empty ranking."""
        k = min(k, self.num_docs)
        tokens = self.analyzer(list(texts))
        known = self._bm25.vocab_dict  # bm25s rejects a query without a known term
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        hits: list[Hits] = [empty] * len(tokens)
        todo = [i for i, t in enumerate(tokens) if any(tok in known for tok in t)]
        if todo:
            docs, scores = self._bm25.retrieve(
                [[tok for tok in tokens[i] if tok in known] for i in todo], k=k, show_progress=False
            )
            for row, i in enumerate(todo):
                keep = scores[row] > 0
                hits[i] = (docs[row][keep].astype(np.int64), scores[row][keep].astype(np.float32))
        return hits
