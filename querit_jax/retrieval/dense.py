"""Dense first stage: a corpus embedded once, queries answered by exact inner-product top-k.

The embedding function is given (`embed(texts, role, progress=None) -> [n, D] float32`, role "query"
or "document"), so this module needs no model code: `querit_jax.loading.build_retriever` binds an
embedder checkpoint's runner to it. The top-k is `topk.ShardedCorpus` (exact, sharded over this
process's devices, or over every process's for mining: `load`), filled chunk by chunk as documents
are embedded: the host never holds the corpus matrix.

At corpus scale the embeddings are computed once and saved (`embed_parts`): part j (rows
[j * part_size, (j + 1) * part_size) of a docstore) is embedded by process j % P; then each process
reads the parts of the rows its devices hold (`DenseRetriever.load`): all of them for an index on
its own devices, its slice for one index over every process's devices. A marker (`dense.json`)
says the parts are complete.
"""

import json
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from querit_jax import storage
from querit_jax.data.io import read_json
from querit_jax.errors import DataFormatError
from querit_jax.retrieval import Hits, Retriever
from querit_jax.retrieval.topk import ShardedCorpus

EmbedFn = Callable[..., np.ndarray]
MARKER = "dense.json"
PART = "part-{:05d}.npy"


class DenseRetriever(Retriever):
    """Exact inner-product retrieval over a corpus embedded with `embed`."""

    name = "dense"

    def __init__(
        self,
        embed: EmbedFn,
        devices=None,
        block: int = 512,
        progress: bool = True,
        chunk: int = 4096,
    ):
        super().__init__([])
        self.embed = embed
        self.devices, self.block, self.progress, self.chunk = devices, block, progress, chunk
        self.corpus: ShardedCorpus | None = None

    def index(self, doc_ids: Sequence[str], texts: Sequence[str]) -> "DenseRetriever":
        """Embeds `texts` chunk by chunk straight into the device shards."""
        if not doc_ids:
            raise DataFormatError("The corpus is empty: there is nothing to encode.")
        bar = tqdm(total=len(texts), desc="encoding corpus", unit="doc", disable=not self.progress)
        first = self.embed(list(texts[: self.chunk]), "document", progress=bar)
        rest = (
            self.embed(list(texts[i : i + self.chunk]), "document", progress=bar)
            for i in range(self.chunk, len(texts), self.chunk)
        )
        self.corpus = ShardedCorpus.from_chunks(
            _chain(first, rest), len(texts), first.shape[1], self.devices, self.block, first.dtype
        )
        bar.close()
        self._ids = list(doc_ids)
        return self

    @classmethod
    def load(cls, location: str, embed: EmbedFn, doc_ids, devices=None, block: int = 512):
        """Saved embeddings (`embed_parts`) placed on `devices`: on this process's devices, or, for
        devices of several processes, each process reading the parts of its own devices' rows only
        (searches are then collective: `search_rows`)."""
        meta = read_marker(location)
        if meta is None:
            raise DataFormatError(f"{location}: no complete dense index ({MARKER} missing).")
        retriever = cls(embed, devices, block, progress=False)
        try:
            retriever.corpus = ShardedCorpus.from_parts(
                lambda j: storage.load_array(storage.join(location, PART.format(j))),
                meta["part_size"],
                meta["documents"],
                meta["dim"],
                devices,
                block,
                np.dtype(meta["dtype"]),
            )
        except ValueError as e:
            raise DataFormatError(
                f"{location}: {e} The saved embeddings are damaged: delete the directory to embed "
                "the corpus again."
            ) from None
        retriever._ids = doc_ids
        return retriever

    @property
    def collective(self) -> bool:
        """Whether the index spans several processes: every process then calls `search_rows`
        together (the same number of times, with its own queries, maybe none)."""
        return self.corpus is not None and self.corpus.spans_processes

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.corpus.dim), self.corpus.dtype)
        return self.embed(list(texts), "query")

    def search_rows(self, texts: Sequence[str], k: int) -> list[Hits]:
        if self.corpus is None:
            raise RuntimeError("Call index() before search().")
        if not len(texts) and not self.collective:
            return []
        scores, rows = self.corpus.search(self.embed_queries(texts), k)
        return [(r.astype(np.int64), s.astype(np.float32)) for s, r in zip(scores, rows)]


def _chain(first, rest):
    yield first
    yield from rest


def read_marker(location: str) -> dict | None:
    path = storage.join(location, MARKER)
    return read_json(path) if storage.exists(path) else None


def embed_parts(
    embed: EmbedFn,
    texts: Callable[[int, int], list[str]],
    n: int,
    location: str,
    part_size: int,
    process_index: int = 0,
    process_count: int = 1,
    log=None,
) -> None:
    """Embeds this process's parts (j % process_count == process_index) of an n-document corpus
    whose rows `texts(start, stop)` returns, skipping parts already saved (a relaunch resumes)."""
    have = set(storage.listdir(location))
    for j in range(process_index, -(-n // part_size), process_count):
        if PART.format(j) in have:
            continue
        start = j * part_size
        emb = embed(texts(start, min(start + part_size, n)), "document")
        storage.save_array(storage.join(location, PART.format(j)), emb)
        if log:
            log(f"dense index: part {j + 1}/{-(-n // part_size)} embedded")


def commit_parts(location: str, n: int, part_size: int, describe: dict) -> None:
    """Writes the marker once every part is saved (process 0, after the others' parts)."""
    parts = -(-n // part_size)
    missing = [
        j for j in range(parts) if not storage.exists(storage.join(location, PART.format(j)))
    ]
    if missing:
        raise DataFormatError(f"{location}: dense index parts {missing[:5]} are missing.")
    first = storage.load_array(storage.join(location, PART.format(0)))
    meta = {
        **describe, "documents": n, "parts": parts, "part_size": part_size,
        "dim": int(first.shape[1]), "dtype": str(first.dtype),
    }  # fmt: skip
    storage.write_text(storage.join(location, MARKER), json.dumps(meta, indent=2) + "\n")
