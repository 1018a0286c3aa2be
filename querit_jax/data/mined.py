"""The output format of a mining run: soft-label shards, their records, and the final manifest.

    <output>/run.json                  what the run is (settings + corpus hash, inputs) and where
                                       its docstore is: written by process 0 when the run starts;
                                       another run there is refused
    <output>/shard-00000.jsonl         training groups of shard 0 (query, document ids, teacher
                                       scores), written in one piece by its process
    <output>/records/shard-00000.json  written after its shard: documents, counts, seconds, process,
                                       the run's digest and the dedupe key of each group (row order)
    <output>/shard-00007.dedup.jsonl   a shard minus the groups whose query an earlier shard has
    <output>/manifest.json             written once, by process 0, when every shard is recorded: one
                                       entry per shard (its final file), totals, the docstore,
                                       "complete": true
    <output>/index/docstore/           the corpus's docstore (`data.docstore`), and the first-stage
                                       index beside it (`mining.index_dir` may put both elsewhere)

Records are append-only (one small object per finished shard: object stores cannot append), so any
number of processes record shards without touching a shared file. A group is

    {"qid", "query", "pos_ids": [doc id], "neg_ids": [doc ids], "pos_scores": [float],
     "neg_scores": [floats], "source_doc": doc id}

FlagEmbedding's fields with documents named by id instead of carried as texts ("pos", "neg"), plus
the teacher's score of each: a group's size does not depend on its documents' lengths, and every
text lives once, in the docstore. `"docstore"` in run.json and the manifest says where (relative to
the output, or a location of its own for a shared `mining.index_dir`); `docstore_location` and
`open_docstore` find it, `read_mined` reads the groups with their documents' docstore rows, and
`with_texts` joins the texts back (for a reader that wants FlagEmbedding's groups). Written by
`querit_jax.mining`; read by training (`data.train` may name a mining output, whose texts the input
pipeline joins per record: `data.pipeline`), the diagnostics and the dev set; `shard_files` lists
the final files of a complete run, `fingerprint` identifies one without reading its data.
"""

import hashlib
from collections.abc import Iterator

from querit_jax import storage
from querit_jax.data.docstore import DocStore, read_meta
from querit_jax.data.groups import validate_group
from querit_jax.data.io import ReadReport, iter_jsonl, read_json
from querit_jax.errors import DataFormatError

SHARD = "shard-{:05d}.jsonl"
DEDUP = "shard-{:05d}.dedup.jsonl"
RECORDS = "records"
RECORD = "shard-{:05d}.json"
MANIFEST = "manifest.json"
RUN = "run.json"
DOCSTORE = "index/docstore"  # where a run keeps its docstore unless `mining.index_dir` is set


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


def fingerprint(output: str) -> str:
    """Identifies a complete mining run's groups and texts without reading them: the manifest
    (every shard's final file, the docstore's location), each final shard file's stat key (it
    changes when the file is rewritten: `storage.stat_key`) and the corpus SHA-256 the docstore
    recorded when it was built. What a training start hashes for a mined `data.train` source: the
    shards and the index beside the docstore (BM25, dense parts: corpus-sized) are never read.

    Raises:
      DataFormatError: the run is not complete.
    """
    files = shard_files(output)
    h = hashlib.sha256()
    with storage.open_read_raw(storage.join(output, MANIFEST)) as f:
        h.update(f.read())
    keys = storage.stat_keys(output)  # one listing, not one request per shard (~156k at 10M docs)
    for path in files:
        name = storage.basename(path)
        if name not in keys:
            raise DataFormatError(
                f"{output}: the shard file {name} its manifest names is missing; mine again into "
                "an empty mining.output."
            )
        h.update(f"{name} {keys[name]}\n".encode())
    meta = read_meta(docstore_location(output))  # missing: open_docstore says what to do
    h.update((meta["corpus"]["sha256"] if meta else "no docstore").encode())
    return h.hexdigest()


def docstore_location(output: str) -> str:
    """The docstore of the mining run in `output`, as its manifest (or run.json) records it."""
    info = {}
    for name in (MANIFEST, RUN):
        path = storage.join(output, name)
        if storage.exists(path):
            info = read_json(path)
            break
    where = info.get("docstore", DOCSTORE)
    if storage.is_remote(where) or where.startswith("/"):
        return where  # a shared `mining.index_dir`: a location of its own
    return storage.contained(output, where, storage.join(output, MANIFEST))


def open_docstore(output: str) -> DocStore:
    """The docstore holding the texts of the groups mined in `output`.

    Raises:
      DataFormatError: the docstore is missing (says where it was expected and what to do).
    """
    location = docstore_location(output)
    if read_meta(location) is None:
        raise DataFormatError(
            f"{output}: the mined groups name their documents by id, and their texts live in the "
            f"run's docstore {location}, which is missing ({location}/docstore.json). Keep the "
            "mining output's index/ (or its mining.index_dir) with its shards, or mine again."
        )
    return DocStore(location)


def iter_mined(
    output: str, store: DocStore, strict: bool = True, report: ReadReport | None = None
) -> Iterator[dict]:
    """The groups of a complete mining run, streamed shard by shard (never all in memory), each with
    its documents' docstore rows added (`"pos_rows"`, `"neg_rows"`: what the input pipeline joins
    the texts by).

    Raises:
      DataFormatError: `file:line` of a malformed group or of a document id the docstore lacks
        (strict; otherwise the group is skipped and counted in `report`).
    """
    report = report if report is not None else ReadReport()
    for path in shard_files(output):
        for lineno, g in iter_jsonl(path, report, strict):
            reason = validate_group(g, ids=True)
            if reason is None and "pos" not in g:
                rows = [store.row(d) for d in g["pos_ids"] + g["neg_ids"]]
                if None in rows:
                    missing = (g["pos_ids"] + g["neg_ids"])[rows.index(None)]
                    reason = (
                        f"document id {missing!r} is not in the docstore {store.location} "
                        f"({len(store)} documents): the shards and the docstore are of different "
                        "corpora. Mine again into an empty mining.output."
                    )
                else:
                    g = {**g, "pos_rows": rows[: len(g["pos_ids"])],
                         "neg_rows": rows[len(g["pos_ids"]) :]}  # fmt: skip
            if reason:
                report.skip(f"{path}:{lineno}", reason, strict)
                continue
            yield g


def read_mined(
    output: str, store: DocStore, strict: bool = True, report: ReadReport | None = None
) -> list[dict]:
    """`iter_mined` as a list (for small runs and tests)."""
    return list(iter_mined(output, store, strict, report))


def with_texts(group: dict, store: DocStore) -> dict:
    """A mined group with its documents' texts as FlagEmbedding's "pos" and "neg"."""
    rows = {k: group.get(f"{k}_rows") or [store.row(d) for d in group[f"{k}_ids"]]
            for k in ("pos", "neg")}  # fmt: skip
    plain = {k: v for k, v in group.items() if k not in ("pos_rows", "neg_rows", "store")}
    return {**plain, "pos": store.texts(rows["pos"]), "neg": store.texts(rows["neg"])}
