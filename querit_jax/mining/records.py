"""Shard records and the manifest of a mining run (layout: `querit_jax.data.mined`).

Each process records the shards it finishes, one small object each, after the shard's file: a shard
with a record is done (a relaunch skips it), a shard written but not recorded is mined again.

Dedupe is deterministic whatever the number of processes: while mining, a shard drops queries it
already has (normalised, `filters.normalize`); when every shard is recorded, process 0 walks the
shards in order and drops each group whose query an earlier shard kept, writing the shard without
them as `shard-NNNNN.dedup.jsonl` (the original stays; the manifest names the file to read). This is
exactly the set a single process mining the shards in order and deduping across all of them keeps,
with no shard waiting for another while mining. The keys compared are 64-bit hashes of the
normalised queries, stored in the records, so the final pass reads no shard without duplicates.
"""

import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from querit_jax import storage
from querit_jax.data.io import read_json, write_json
from querit_jax.data.mined import DEDUP, MANIFEST, RECORD, RECORDS
from querit_jax.errors import MiningError
from querit_jax.mining.filters import normalize


def query_key(query: str) -> str:
    """The dedupe key of a query: 64-bit BLAKE2b of its normalised form, in hex."""
    return hashlib.blake2b(normalize(query).encode("utf-8"), digest_size=8).hexdigest()


def recorded(output: str) -> set[int]:
    """Indices of the shards recorded in `output` (one listing, no record read)."""
    names = storage.listdir(storage.join(output, RECORDS))
    return {int(n[6:-5]) for n in names if n.startswith("shard-") and n.endswith(".json")}


def write_record(output: str, index: int, record: dict) -> None:
    write_json(storage.join(output, RECORDS, RECORD.format(index)), {"shard": index, **record})


def key_value(key: str) -> int:
    """A `query_key` as the unsigned 64-bit integer it spells."""
    return int(key, 16)


def _read_record(path: str) -> dict:
    record = read_json(path)
    if not isinstance(record.get("keys"), list):
        raise MiningError(
            f"{path}: the shard record has no query keys (damaged, or written by another version);"
            " delete it and run the same command again to mine that shard again."
        )
    record["keys"] = np.array([key_value(k) for k in record["keys"]], np.uint64)
    return record


def read_records(output: str, indices) -> dict[int, dict]:
    """The records of these shards (read in parallel from object stores), each with its query keys
    as one uint64 array, converted as each record is read: 8 bytes a query (30M queries' keys as
    JSON strings would hold GBs in the process that finalises the run)."""
    paths = {i: storage.join(output, RECORDS, RECORD.format(i)) for i in indices}
    workers = 32 if storage.is_remote(output) else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(_read_record, paths.values())))


def _rewrite(source: str, target: str, drop: set[int]) -> None:
    """`source` without its lines (0-based, one group each) in `drop`, written as `target`."""
    with storage.open_read(source) as fin, storage.atomic_writer(target) as fout:
        for i, line in enumerate(fin):
            if i not in drop:
                fout.write(line)


def finalize(output: str, shards: int, digest: str, dedupe: bool, header: dict) -> dict:
    """Process 0, once every shard is recorded: cross-shard dedupe, then `manifest.json`."""
    missing = sorted(set(range(shards)) - recorded(output))
    if missing:
        raise MiningError(
            f"{output}: shards {missing[:5]} are not recorded; run the same command again to mine "
            "them."
        )
    records = read_records(output, range(shards))
    stale = [i for i, r in records.items() if r.get("run") != digest]
    if stale:
        raise MiningError(f"{output}: shards {stale[:5]} were recorded by another mining run.")
    keys = [records[i]["keys"] for i in range(shards)]
    flat = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    first = np.zeros(len(flat), bool)
    first[np.unique(flat, return_index=True)[1]] = True  # the first occurrence in shard order
    entries, totals, offset = {}, Counter(), 0
    for i in range(shards):
        record, n = records[i], len(keys[i])
        kept = first[offset : offset + n] if dedupe else np.ones(n, bool)
        offset += n
        counts, name = Counter(record["counts"]), record["file"]
        if not kept.all():
            drop = set(np.flatnonzero(~kept).tolist())
            name = DEDUP.format(i)
            _rewrite(storage.join(output, record["file"]), storage.join(output, name), drop)
            counts["groups"] -= len(drop)
            counts["dropped_duplicate"] += len(drop)
        entries[str(i)] = {
            "file": name,
            "documents": record["documents"],
            "counts": dict(counts),
            "seconds": record["seconds"],
            "process": record["process"],
        }
        totals.update(counts)
    manifest = {**header, "shards": entries, "totals": dict(totals), "complete": True}
    write_json(storage.join(output, MANIFEST), manifest)
    return manifest


def read_run(output: str, name: str) -> dict | None:
    path = storage.join(output, name)
    return read_json(path) if storage.exists(path) else None


def run_digest(signature: dict) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
