"""The output format of a mining run: soft-label shards and their manifest.

    <output>/manifest.json        signature (settings + corpus hash), inputs, one record per finished
                                  shard (file, documents, counts, seconds), totals, "complete": true
    <output>/shard-00000.jsonl    training groups (data.groups schema + teacher scores)

Written by `querit_jax.mining.miner`; read by training (`data.train` may name a mining output).
"""

from querit_jax import storage
from querit_jax.data.io import read_json
from querit_jax.errors import DataFormatError

SHARD = "shard-{:05d}.jsonl"
MANIFEST = "manifest.json"


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
