"""Training inputs: the configured sources -> one validated groups file -> ArrayRecord -> grain.

A source is `DIR[:split]` (a BEIR-layout dataset; groups are mined with BM25 or random negatives), a
`FILE.jsonl` of training groups (FlagEmbedding format), a MIRACL language or a mining output. The
groups file, `<workdir>/data/train.jsonl`, is rebuilt only when the inputs or the mining settings
change (its manifest records both); the grain iterator over it is checkpointed with the train state.
"""

import os
import time

import jax

from querit_jax import config_lib
from querit_jax.data import groups, mined, packing, pipeline, tfds_groups
from querit_jax.data.io import ReadReport, fingerprint, read_json, write_json, write_jsonl
from querit_jax.data.sources import dataset_name, load_dataset, parse_source
from querit_jax.data.tokenize import PairEncoder
from querit_jax.retrieval.analyzers import SubwordAnalyzer
from querit_jax.retrieval.bm25 import BM25Retriever


def prepare_train_groups(data_cfg, tokenizer, out_dir: str, log=print) -> tuple[str, dict]:
    """Builds `<out_dir>/train.jsonl` from the configured sources. Returns (path, manifest).

    `tokenizer` is the one BM25 mining uses (its name is part of the cache signature).
    """
    os.makedirs(out_dir, exist_ok=True)
    path, manifest_path = (
        os.path.join(out_dir, "train.jsonl"),
        os.path.join(out_dir, "manifest.json"),
    )
    settings = {
        k: getattr(data_cfg, k)
        for k in ("negatives", "num_negatives", "negative_depth", "seed", "strict")
    }
    inputs = []
    for spec in data_cfg.train:
        kind, src, split = parse_source(spec)
        root = src.rsplit(":", 1)[0] if kind == "miracl" else src
        if not os.path.exists(root):
            raise FileNotFoundError(f"data.train source {spec!r}: {root} does not exist.")
        inputs.append({"spec": spec, "kind": kind, "sha256": fingerprint(root)})
    bm25 = f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}"
    signature = {"version": 2, "inputs": inputs, "settings": settings, "bm25_tokenizer": bm25}
    if os.path.exists(path) and os.path.exists(manifest_path):
        manifest = read_json(manifest_path)
        if manifest.get("signature") == signature:
            log(f"Reusing training groups {path} ({manifest['groups']} groups).")
            return path, manifest
    start = time.time()
    all_groups, per_source = [], {}
    for spec in data_cfg.train:
        kind, src, split = parse_source(spec)
        report = ReadReport()
        if kind == "groups":
            found = groups.read_groups(src, strict=data_cfg.strict, report=report)
        elif kind == "mined":
            found = [
                g
                for path in mined.shard_files(src)
                for g in groups.read_groups(path, data_cfg.strict, report)
            ]
        else:
            ds = load_dataset(kind, src, split, data_cfg.strict)
            report = ds.report
            retriever = None
            if data_cfg.negatives == "bm25":
                doc_ids = sorted(ds.corpus)
                texts = [ds.doc_text(d) for d in doc_ids]
                retriever = BM25Retriever(doc_ids, texts, SubwordAnalyzer(tokenizer))
            found = groups.mine_groups(
                ds,
                data_cfg.num_negatives,
                data_cfg.negatives,
                retriever,
                data_cfg.negative_depth,
                data_cfg.seed,
                lang=dataset_name(src, split).partition("/")[0].partition(":")[0],
            )
        if report.skipped:
            log(
                f"{spec}: skipped {report.skipped} malformed rows (data.strict=False); first: {report.reasons[:3]}"
            )
        per_source[spec] = {
            "groups": len(found),
            "with_teacher_scores": sum("pos_scores" in g and "neg_scores" in g for g in found),
            "read": report.to_dict(),
        }
        all_groups.extend(found)
    if not all_groups:
        raise ValueError(f"data.train {list(data_cfg.train)} produced no training groups.")
    write_jsonl(path, all_groups)
    manifest = {
        "signature": signature,
        "groups": len(all_groups),
        "groups_with_teacher_scores": sum(
            "pos_scores" in g and "neg_scores" in g for g in all_groups
        ),
        "sources": per_source,
        "seconds": round(time.time() - start, 2),
    }
    write_json(manifest_path, manifest)
    log(f"Wrote {len(all_groups)} training groups to {path} in {manifest['seconds']} s.")
    return path, manifest


def input_pipeline(cfg, spec, tokenizer, workdir, log):
    """Mines/validates the training groups, builds the ArrayRecord dataset, returns the grain iterator.

    With several processes each builds its own identical copy (under data/process_<i>): correct on
    per-host disks and on shared ones alike.
    """
    data_dir = os.path.join(workdir, "data")
    if jax.process_count() > 1:
        data_dir = os.path.join(data_dir, f"process_{jax.process_index()}")
    bm25_tokenizer = tokenizer
    if cfg.data.bm25_tokenizer:
        from transformers import AutoTokenizer

        bm25_tokenizer = AutoTokenizer.from_pretrained(cfg.data.bm25_tokenizer)
    groups_path, manifest = prepare_train_groups(cfg.data, bm25_tokenizer, data_dir, log)
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
    builder = tfds_groups.prepare_groups({"train": groups_path}, os.path.join(data_dir, "tfds"))
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
    dataset = pipeline.train_dataset(
        builder.as_data_source("train"),
        encoder,
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        cfg.data.batch_size // jax.process_count(),
        cfg.data.group_size,
        cfg.data.seed,
        jax.process_index(),
        jax.process_count(),
    )
    if cfg.data.pack:
        dataset, rows = packing.pack_train_dataset(
            dataset,
            cfg.data,
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            jax.device_count(),
            jax.process_index(),
            jax.process_count(),
        )
        log(f"Packing each step's pairs into {rows} rows of {cfg.data.max_length} tokens.")
    return (
        pipeline.make_iterator(dataset, num_threads=cfg.data.num_threads),
        manifest,
        bm25_tokenizer,
    )
