"""The synthetic dev set of a mining run: mined queries held out from training, for label-free
selection (training length, fusion weight, merge t), never real test questions.

A query is held out when its *source document* is (a seeded hash of the document id below
`mining.dev_share`), so no training group is built from a dev document's queries; each process
decides alone and identically. Dev queries are written beside their shard (`dev-00000.jsonl`, before
the shard's record) with the first stage's whole candidate list and scores, and no teacher labels.
When the run is finalised, process 0 writes them as a BEIR-layout directory

    <output>/dev/corpus.jsonl         the sources and candidates of the dev queries
    <output>/dev/queries.jsonl        the dev queries
    <output>/dev/qrels/test.tsv       query -> its source document (relevance 1)
    <output>/dev/first_stage.trec     the first stage's candidates and scores (the run to rerank)
    <output>/dev/dev.json             counts and where it came from

which `evaluate` and training's evaluation (`train.select_on`) rerank from `first_stage.trec`.
Dev queries that repeat a training query (normalised) or an earlier dev query are dropped.
"""

import zlib

import numpy as np

from querit_jax import storage
from querit_jax.data.io import iter_jsonl, write_json, write_jsonl
from querit_jax.data.runs import write_trec
from querit_jax.eval.suite import OWN_RUN
from querit_jax.mining.filters import normalize
from querit_jax.mining.records import key_value, query_key, read_records

DEV_SHARD = "dev-{:05d}.jsonl"
DEV_DIR = "dev"
RUN_FILE = OWN_RUN


def is_dev(doc_id: str, share: float) -> bool:
    """Whether the queries of source document `doc_id` are held out (the same in every process)."""
    return share > 0 and zlib.crc32(f"dev|{doc_id}".encode()) % 10_000 < share * 10_000


def dev_dir(output: str) -> str:
    return storage.join(output, DEV_DIR)


def write_dev(output: str, shards: int, store, manifest: dict, log=print) -> dict:
    """Process 0, after `records.finalize`: the dev shards -> `<output>/dev/` (BEIR layout)."""
    records = read_records(output, range(shards)).values()
    train_keys = np.unique(np.concatenate([np.zeros(0, np.uint64), *(r["keys"] for r in records)]))
    del records

    def is_training_query(query: str) -> bool:
        key = np.uint64(key_value(query_key(query)))
        at = np.searchsorted(train_keys, key)
        return bool(at < len(train_keys) and train_keys[at] == key)

    queries, run, qrels, rows, seen, dropped = [], {}, [], set(), set(), 0
    for i in range(shards):
        for _, g in iter_jsonl(storage.join(output, DEV_SHARD.format(i))):
            norm = normalize(g["query"])
            if norm in seen or is_training_query(g["query"]):
                dropped += 1
                continue
            seen.add(norm)
            queries.append({"_id": g["qid"], "text": g["query"]})
            qrels.append(f"{g['qid']}\t{g['source_doc']}\t1")
            run[g["qid"]] = dict(zip(g["candidate_ids"], g["candidate_scores"]))
            rows.update(g["_rows"])
    rows = sorted(rows)
    target = dev_dir(output)
    corpus = [
        {"_id": i, "title": "", "text": t} for i, t in zip(store.ids(rows), store.texts(rows))
    ]
    write_jsonl(storage.join(target, "corpus.jsonl"), corpus)
    write_jsonl(storage.join(target, "queries.jsonl"), queries)
    storage.write_text(
        storage.join(target, "qrels", "test.tsv"),
        "\n".join(["query-id\tcorpus-id\tscore", *qrels]) + "\n",
    )
    write_trec(run, storage.join(target, RUN_FILE), tag="first_stage")
    info = {
        "queries": len(queries),
        "documents": len(corpus),
        "dropped_repeats": dropped,
        "training_groups": manifest.get("totals", {}).get("groups", 0),
        "held_out": "queries of source documents hashed into the dev share (never trained on)",
    }
    write_json(storage.join(target, "dev.json"), info)
    log(f"Synthetic dev set: {len(queries)} queries over {len(corpus)} documents in {target}.")
    return info
