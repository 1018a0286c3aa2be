"""Training inputs: the configured sources -> one validated groups file -> ArrayRecord -> grain.

A source is `DIR[:split]` (a BEIR-layout dataset; groups are mined with BM25 or random negatives), a
`FILE.jsonl` of training groups (FlagEmbedding format), a MIRACL language or a mining output. The
groups file, `<workdir>/data/train.jsonl`, is rebuilt only when the inputs or the mining settings
change (its manifest records both); the grain iterator over it is checkpointed with the train state.
Mined groups keep their documents' ids and docstore rows there, not their texts (`data.mined`): the
manifest lists the docstores ("docstores"), and each process's pipeline joins the texts of its own
groups from them (memory-mapped), so the training data's size does not depend on the texts.

The data is built once, by process 0, into the workdir (local or a bucket): the groups file, its
manifest and the ArrayRecord dataset (`<workdir>/data/tfds/<key>`, built locally and uploaded for a
bucket). Inputs are named by their content hashes, a mining output by its manifest, shard stat keys
and docstore hash (`mined.fingerprint`: its corpus-sized index is never read), and the dataset by
the groups file's hash, taken while it was written (a relaunch does not re-read the groups). The
other processes wait for it and read the same files, each through a local copy of the dataset; each
then reads, joins and tokenises only its own rows of every global batch (data/pipeline.py) and,
packed, packs them into its own block of rows, the processes agreeing on each step's row count
(data/packing.py).
"""

import hashlib
import time

import jax

from querit_jax import config_lib, storage
from querit_jax.data import docstore, groups, mined, packing, pipeline, tfds_groups
from querit_jax.data.io import ReadReport, fingerprint, read_json, write_json, write_jsonl
from querit_jax.data.sources import dataset_name, load_dataset, parse_source
from querit_jax.data.tokenize import PairEncoder
from querit_jax.errors import QueritError, StorageError
from querit_jax.models.tokenizers import load_tokenizer_dir
from querit_jax.retrieval.analyzers import analyzer_for
from querit_jax.retrieval.bm25 import BM25Retriever


def prepare_train_groups(data_cfg, tokenizer, out_dir: str, log=print) -> tuple[str, dict]:
    """Builds `<out_dir>/train.jsonl` from the configured sources. Returns (path, manifest).

    `tokenizer` is the one BM25 mining uses (its name is part of the cache signature).
    """
    path, manifest_path = (
        storage.join(out_dir, "train.jsonl"),
        storage.join(out_dir, "manifest.json"),
    )
    settings = {
        k: getattr(data_cfg, k)
        for k in ("negatives", "num_negatives", "negative_depth", "seed", "strict")
    }
    inputs = []
    for spec in data_cfg.train:
        kind, src, _ = parse_source(spec)
        root = src.rsplit(":", 1)[0] if kind == "miracl" else src
        if not storage.exists(root):
            raise FileNotFoundError(f"data.train source {spec!r}: {root} does not exist.")
        # A mining output by its manifest, shard stat keys and corpus hash: never its index.
        digest = mined.fingerprint(root) if kind == "mined" else fingerprint(root)
        inputs.append({"spec": spec, "kind": kind, "sha256": digest})
    bm25 = (
        tokenizer
        if isinstance(tokenizer, str)
        else f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}"
    )
    signature = {"version": 3, "inputs": inputs, "settings": settings, "bm25_tokenizer": bm25}
    if storage.exists(path) and storage.exists(manifest_path):
        manifest = read_json(manifest_path)
        if manifest.get("signature") == signature:
            log(f"Reusing training groups {path} ({manifest['groups']} groups).")
            return path, manifest
    start = time.time()
    per_source, docstores = {}, []  # docstores: [{"location", "sha256"}]

    def source_groups(spec):
        """(groups of one data.train source: an iterator for mining outputs, which are streamed
        shard by shard, never held whole; its ReadReport)."""
        kind, src, split = parse_source(spec)
        report = ReadReport()
        if kind == "groups":
            return groups.read_groups(src, strict=data_cfg.strict, report=report), report
        if kind == "mined":  # ids and docstore rows, no texts
            store = mined.open_docstore(src)
            entry = {"location": store.location, "sha256": store.sha256}
            docstores.extend([] if entry in docstores else [entry])
            k = docstores.index(entry)
            found = mined.iter_mined(src, store, data_cfg.strict, report)
            return ({**g, "store": k} if "pos_rows" in g else g for g in found), report
        ds = load_dataset(kind, src, split, data_cfg.strict)
        retriever = None
        if data_cfg.negatives == "bm25":
            doc_ids = sorted(ds.corpus)
            texts = [ds.doc_text(d) for d in doc_ids]
            retriever = BM25Retriever(doc_ids, texts, analyzer_for(tokenizer))
        found = groups.mine_groups(
            ds,
            data_cfg.num_negatives,
            data_cfg.negatives,
            retriever,
            data_cfg.negative_depth,
            data_cfg.seed,
            lang=dataset_name(src, split).partition("/")[0].partition(":")[0],
        )
        return found, ds.report

    def all_groups():
        """Every source's groups in order, counted on the way into the file."""
        for spec in data_cfg.train:
            found, report = source_groups(spec)
            count = {"groups": 0, "with_teacher_scores": 0}
            for g in found:
                count["groups"] += 1
                count["with_teacher_scores"] += "pos_scores" in g and "neg_scores" in g
                yield g
            if report.skipped:
                log(
                    f"{spec}: skipped {report.skipped} malformed rows (data.strict=False); first: "
                    f"{report.reasons[:3]}"
                )
            per_source[spec] = {**count, "read": report.to_dict()}

    digest = hashlib.sha256(storage.basename(path).encode())  # what `fingerprint(path)` gives
    write_jsonl(path, all_groups(), digest)  # streamed into the file (committed when complete)
    total = sum(p["groups"] for p in per_source.values())
    if not total:
        storage.remove(path)
        raise ValueError(f"data.train {list(data_cfg.train)} produced no training groups.")
    manifest = {
        "signature": signature,
        "groups": total,
        "groups_with_teacher_scores": sum(p["with_teacher_scores"] for p in per_source.values()),
        "sources": per_source,
        "docstores": docstores,
        "seconds": round(time.time() - start, 2),
        # The file's content hash, taken while writing it, and its stat key then: a relaunch
        # names the ArrayRecord dataset without reading the file again.
        "sha256": digest.hexdigest(),
        "stat_key": storage.stat_key(path),
    }
    write_json(manifest_path, manifest)
    log(f"Wrote {total} training groups to {path} in {manifest['seconds']} s.")
    return path, manifest


def build_training_data(data_cfg, bm25_tokenizer, data_dir: str, log) -> dict:
    """The groups file, its manifest and the ArrayRecord dataset in `data_dir` (built or reused).

    Returns the manifest; its "arrayrecord" entry is the dataset's location relative to `data_dir`.
    """
    groups_path, manifest = prepare_train_groups(data_cfg, bm25_tokenizer, data_dir, log)
    # The dataset is named by the groups' content hash: the one taken while writing them, if the
    # file is unchanged since (a relaunch does not re-read GBs of groups), else read again once
    # (and recorded with the file's new stat key).
    stat = storage.stat_key(groups_path)
    changed = not (manifest.get("sha256") and manifest.get("stat_key") == stat)
    if changed:
        manifest.update(sha256=fingerprint(groups_path), stat_key=stat)
    dataset = tfds_groups.build_groups(
        {"train": groups_path}, storage.join(data_dir, "tfds"), key=manifest["sha256"][:16]
    )
    relative = f"tfds/{storage.basename(dataset)}"
    if changed or manifest.get("arrayrecord") != relative:
        manifest["arrayrecord"] = relative
        write_json(storage.join(data_dir, "manifest.json"), manifest)
    return manifest


def shared_training_data(data_cfg, bm25_tokenizer, data_dir: str, log):
    """(manifest, prepared TFDS builder) on every process; process 0 builds, the others wait.

    The others wait for process 0 to say whether it succeeded, so a failure there stops every
    process with an error, not a hang. Process 0 makes its local copy of the dataset first, so
    processes sharing a disk (and so a cache) find it there instead of copying it at the same time.
    """
    manifest, builder, error = None, None, None
    if jax.process_index() == 0:
        try:
            manifest = build_training_data(data_cfg, bm25_tokenizer, data_dir, log)
            builder = tfds_groups.open_groups(storage.join(data_dir, manifest["arrayrecord"]))
        except BaseException as err:  # reported below, after the other processes were told
            error = err
    if jax.process_count() > 1 and not _process_zero_succeeded(f"data {data_dir}", error is None):
        raise QueritError(
            "data.train: process 0 could not prepare the training data (its error is above)."
        )
    if error is not None:
        raise error
    if manifest is None:
        manifest_path = storage.join(data_dir, "manifest.json")
        if not storage.exists(manifest_path):
            raise StorageError(
                f"{data_dir}: process {jax.process_index()} cannot see the training data process 0 "
                "wrote there. With several hosts the workdir must be shared by all of them: use a "
                "gs:// bucket (--workdir=gs://BUCKET/run)."
            )
        manifest = read_json(manifest_path)
        builder = tfds_groups.open_groups(storage.join(data_dir, manifest["arrayrecord"]))
    return manifest, builder


def _process_zero_succeeded(name: str, ok: bool, wait_hours: float = 24.0) -> bool:
    """Every process: whether process 0 reported success (`ok` on process 0) for `name`.

    Through the key-value store of JAX's coordination service, not a device collective: the others
    may wait hours while process 0 mines a large dataset, and CPU collectives (gloo) give up on a
    peer that is late by more than a few seconds. A dead process 0 ends the wait through the
    service's heartbeats.
    """
    from jax._src import distributed

    client, key = distributed.global_state.client, f"querit_jax/{name}"
    if jax.process_index() == 0:
        client.key_value_set(key, "ok" if ok else "failed")
    else:
        ok = client.blocking_key_value_get(key, int(wait_hours * 3_600_000)) == "ok"
    client.wait_at_barrier(f"{key}/read", 600_000)
    if jax.process_index() == 0:
        client.key_value_delete(key)
    return ok


def input_pipeline(cfg, spec, tokenizer, workdir, log):
    """Mines/validates the training groups, builds the ArrayRecord dataset (process 0, once), and
    returns (grain iterator over this process's rows, data manifest, BM25 tokenizer)."""
    data_dir = storage.join(workdir, "data")
    bm25_tokenizer = tokenizer
    if cfg.data.bm25_tokenizer == "unicode":  # the built-in analyser (any language)
        bm25_tokenizer = "unicode"
    elif cfg.data.bm25_tokenizer:
        name = cfg.data.bm25_tokenizer  # a directory (local or gs://) or a Hub id
        bm25_tokenizer = load_tokenizer_dir(
            storage.local_copy(name) if storage.is_remote(name) else name
        )
    manifest, builder = shared_training_data(cfg.data, bm25_tokenizer, data_dir, log)
    distill = sorted(set(config_lib.parse_losses(cfg.train.loss)) - {"listwise_ce"})
    unscored = {
        spec: src["groups"] - src.get("with_teacher_scores", 0)
        for spec, src in manifest["sources"].items()
        if src["groups"] - src.get("with_teacher_scores", 0)
    }
    if distill and unscored:
        raise config_lib.ConfigError(
            f"train.loss uses {', '.join(distill)}, which learns from teacher scores, but these "
            f"data.train sources have groups without them: {unscored}. Mine them with a teacher "
            "(querit_jax.mine) or use train.loss=listwise_ce."
        )
    try:
        spec.check_length(cfg.data.max_length, "data.max_length")
        encoder = PairEncoder(
            tokenizer,
            spec.template,
            cfg.data.max_length,
            cfg.data.max_query_tokens,
            spec.backbone.vocab_size,
        )
    except ValueError as e:
        raise config_lib.ConfigError(f"data.max_length / data.max_query_tokens: {e}") from None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    where = storage.join(data_dir, "manifest.json")
    docstores = tuple(  # checked on every process before the pipeline's workers open them
        docstore.open_checked(d["location"], d["sha256"], where).location
        for d in manifest.get("docstores", [])
    )
    index, count = jax.process_index(), jax.process_count()

    def batches(index: int, count: int):  # process `index`'s share of every global batch
        return pipeline.train_dataset(
            builder.as_data_source("train"),
            encoder,
            pad_id,
            cfg.data.batch_size // count,
            cfg.data.group_size,
            cfg.data.seed,
            index,
            count,
            docstores=docstores,
        )

    dataset, agree = batches(index, count), None
    if cfg.data.pack:
        # Each process packs its own groups; the step shapes come from the first global batches
        # (every process's groups: the same sample everywhere), the rows of each step are agreed
        # in the loop's thread (data/packing.py).
        dataset, shapes, agree = packing.pack_train_dataset(
            dataset,
            cfg.data,
            pad_id,
            jax.device_count(),
            index,
            count,
            sample=batches(0, 1) if count > 1 else None,
        )
        log(f"Packed steps: {shapes}; each step takes the smallest size that holds its pairs.")
    return (
        pipeline.make_iterator(dataset, num_threads=cfg.data.num_threads, then=agree),
        manifest,
        bm25_tokenizer,
    )
