"""The target corpus for mining, built once and shared: docstore, first-stage index, word counts.

    <index_dir>/docstore/        data.docstore: texts and ids by row, the corpus hash
    <index_dir>/bm25-<key>/      bm25s index of the docstore (analyser <key>), memory-mapped
    <index_dir>/dense-<key>/     saved embeddings of an embedder first stage (<key>: model, length)
    <index_dir>/words/           the heuristic generator's document frequencies

`index_dir` defaults to `<output>/index` and may be shared by runs over the same corpus. Process 0
builds what is missing or stale while the others wait: the docstore when the corpus files' stat keys
changed (the corpus is then read and hashed once more), an index when it was built from another
docstore. Dense embeddings are computed by every process (part j by process j % P); with
`dense_scope="global"` each process then holds the rows of its own devices (1/P of the index) and
the processes search together. Every process opens the rest: memory-mapped, through one local copy
per host when they live in a bucket. Every process must see `index_dir` (a gs:// location on a
pod).
"""

import dataclasses
import hashlib

import jax

from querit_jax import storage
from querit_jax.data import docstore as docstore_lib
from querit_jax.data.io import read_json
from querit_jax.errors import MiningError
from querit_jax.mining.coordination import Meeting, process
from querit_jax.mining.generators import WordFrequencies
from querit_jax.retrieval import Retriever
from querit_jax.retrieval import bm25 as bm25_lib
from querit_jax.retrieval import dense as dense_lib
from querit_jax.retrieval.analyzers import analyzer_for

CHUNK = 20_000  # documents per chunk when an index is built


def corpus_paths(target: str) -> list[str]:
    """The corpus files of a BEIR directory (corpus.jsonl) or a MIRACL root (corpus/*.jsonl.gz)."""
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if storage.isfile(storage.join(target, name)):
            return [storage.join(target, name)]
    if storage.isdir(storage.join(target, "corpus")):
        from querit_jax.data.miracl import corpus_files

        return corpus_files(target)
    raise FileNotFoundError(
        f"mining.target {target}: no corpus.jsonl(.gz) (BEIR) nor corpus/ (MIRACL)."
    )


def index_dir(cfg) -> str:
    return cfg.index_dir or storage.join(cfg.output, "index")


def _key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


@dataclasses.dataclass
class CorpusIndex:
    docstore: docstore_lib.DocStore
    retriever: Retriever
    words: WordFrequencies | None  # the heuristic generator's statistics (None for LLMs)


def _stale(meta: dict | None, sha: str) -> bool:
    return meta is None or meta.get("docstore_sha256") != sha


def build_missing(cfg, log) -> None:
    """Builds what is missing or stale (process 0, while the others wait)."""
    root, paths = index_dir(cfg), corpus_paths(cfg.target)
    location = storage.join(root, "docstore")
    if not docstore_lib.is_current(location, paths):
        log(f"Building the docstore of {cfg.target} in {location}")
        docstore_lib.build(paths, location, strict=False, log=log)
    store = docstore_lib.DocStore(location)
    sha = store.sha256
    if cfg.first_stage == "bm25":
        bm25_dir = storage.join(root, f"bm25-{_key(cfg.bm25_tokenizer)}")
        if _stale(bm25_lib.read_marker(bm25_dir), sha):
            log(f"Building the BM25 index of {len(store)} documents in {bm25_dir}")
            bm25_lib.build_index(
                store.iter_texts(CHUNK),
                analyzer_for(cfg.bm25_tokenizer),
                bm25_dir,
                {"docstore_sha256": sha, "analyzer": cfg.bm25_tokenizer},
                log=log,
            )
    if cfg.generator == "heuristic":
        words = storage.join(root, "words")
        marker = storage.join(words, WordFrequencies.MARKER)
        meta = read_json(marker) if storage.exists(marker) else None
        if _stale(meta, sha):
            log(f"Counting the words of {len(store)} documents for the heuristic generator")
            WordFrequencies.build(store.iter_texts(CHUNK)).save(words, {"docstore_sha256": sha})


def open_index(cfg, log, meeting: Meeting, devices=None) -> CorpusIndex:
    """Builds (process 0) or waits, then opens the corpus index in every process."""
    index = process()[0]
    if index == 0:
        build_missing(cfg, log)
    meeting.wait_for_all("index built")
    root = index_dir(cfg)
    location = storage.join(root, "docstore")
    if docstore_lib.read_meta(location) is None:
        raise MiningError(
            f"{location}: process {index} does not see the docstore process 0 built; mining.output "
            "(or mining.index_dir) must be shared by every process (a gs:// location on a pod)."
        )
    store = docstore_lib.DocStore(location)
    words = None
    if cfg.generator == "heuristic":
        words = WordFrequencies.load(storage.join(root, "words"))
    if cfg.first_stage == "bm25":
        bm25_dir = storage.join(root, f"bm25-{_key(cfg.bm25_tokenizer)}")
        retriever = bm25_lib.BM25Retriever.load(
            bm25_dir, analyzer_for(cfg.bm25_tokenizer), store.ids, version=store.sha256
        )
    else:
        retriever = _dense(cfg, store, root, meeting, devices, log)
    return CorpusIndex(store, retriever, words)


def searched_together(cfg) -> bool:
    """Whether the first stage is one dense index over every process's devices (`dense_scope=
    "global"` with several processes): its searches are then collective."""
    return cfg.first_stage != "bm25" and cfg.dense_scope == "global" and process()[1] > 1


def _dense(cfg, store, root, meeting: Meeting, devices, log) -> Retriever:
    """Embeds this process's parts, waits for the others', then loads the parts of the rows this
    process's devices hold: every part (`dense_scope="process"`), or its share of an index over
    every process's devices (`"global"`, with several processes)."""
    from querit_jax.loading import embedding_function

    index, count = process()
    location = storage.join(root, f"dense-{_key(cfg.first_stage)}")
    embed = embedding_function(
        cfg.first_stage, devices=devices or jax.local_devices(), model_sharding=cfg.model_sharding
    )
    meta = dense_lib.read_marker(location)
    if _stale(meta, store.sha256) or meta.get("part_size") != cfg.dense_part_size:
        if index == 0 and meta is not None:
            storage.rmtree(location)  # embeddings of another corpus or layout
        meeting.wait_for_all("dense cleared")
        dense_lib.embed_parts(
            embed,
            lambda a, b: store.texts(range(a, b)),
            len(store),
            location,
            cfg.dense_part_size,
            index,
            count,
            log,
        )
        meeting.wait_for_all("dense parts")
        if index == 0:
            describe = {"docstore_sha256": store.sha256, "model": cfg.first_stage}
            dense_lib.commit_parts(location, len(store), cfg.dense_part_size, describe)
        meeting.wait_for_all("dense committed")
    if searched_together(cfg):
        devices = jax.devices()  # each process holds its devices' rows; searches are collective
    retriever = dense_lib.DenseRetriever.load(location, embed, store.ids, devices)
    rows, parts = retriever.corpus.local_rows(), retriever.corpus.parts_needed(cfg.dense_part_size)
    log(
        f"dense index ({cfg.dense_scope}): rows {rows[0][0]}-{rows[-1][1]} of {len(store)} on "
        f"this process's devices, read from parts {parts[0]}-{parts[-1]} of "
        f"{-(-len(store) // cfg.dense_part_size)}"
        if rows
        else f"dense index ({cfg.dense_scope}): no rows on this process's devices"
    )
    return retriever
