"""The output format of a mining run: soft-label shards, their records, and the final manifest.

    <output>/run.json                  what the run is (settings + corpus hash, inputs): written by
                                       process 0 when the run starts; another run there is refused
    <output>/shard-00000.jsonl         training groups of shard 0 (data.groups schema + teacher
                                       scores + document ids), written in one piece by its process
    <output>/records/shard-00000.json  written after its shard: documents, counts, seconds, process,
                                       the run's digest and the dedupe key of each group (row order)
    <output>/shard-00007.dedup.jsonl   a shard minus the groups whose query an earlier shard has
    <output>/manifest.json             written once, by process 0, when every shard is recorded: one
                                       entry per shard (its final file), totals, "complete": true
    <output>/index/                    the corpus's docstore and first-stage index (index_dir)

Records are append-only (one small object per finished shard: object stores cannot append), so any
number of processes record shards without touching a shared file. A group is

    {"qid", "query", "pos": [text], "neg": [texts], "pos_scores", "neg_scores",
     "pos_ids": [doc id], "neg_ids": [doc ids], "source_doc": doc id}

(FlagEmbedding's fields plus teacher scores; the ids let a later reader join a docstore instead of
reading the texts). Written by `querit_jax.mining`; read by training (`data.train` may name a mining
output): `shard_files` lists the final files of a complete run.
"""

from querit_jax import storage
from querit_jax.data.io import read_json
from querit_jax.errors import DataFormatError

SHARD = "shard-{:05d}.jsonl"
DEDUP = "shard-{:05d}.dedup.jsonl"
RECORDS = "records"
RECORD = "shard-{:05d}.json"
MANIFEST = "manifest.json"
RUN = "run.json"


def is_complete(output: str) -> bool:
    path = storage.join(output, MANIFEST)
    return storage.exists(path) and bool(read_json(path).get("complete"))


def shard_files(output: str) -> list[str]:
    """The shard files of a finished mining run, in order."""
    if not is_complete(output):
        raise DataFormatError(
            f"{output}: no complete mining run (manifest.json missing or unfinished)."
        )
    manifest = storage.join(output, MANIFEST)
    shards = read_json(manifest)["shards"]
    return [storage.contained(output, shards[k]["file"], manifest) for k in sorted(shards, key=int)]
