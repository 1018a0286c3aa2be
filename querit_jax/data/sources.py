"""Training-data sources named in configs, turned into one validated groups file plus a manifest.

A source is `DIR[:split]` (a BEIR-layout dataset; groups are mined with BM25 or random negatives) or a
`FILE.jsonl` of training groups (FlagEmbedding format). The result, `<workdir>/data/train.jsonl`, is
rebuilt only when the inputs or the mining settings change (the manifest records both).
"""

import os
import time

from querit_jax.data import beir, groups
from querit_jax.data.io import ReadReport, fingerprint, read_json, write_json, write_jsonl
from querit_jax.mining.bm25 import BM25Retriever, SubwordAnalyzer


def parse_source(spec: str, default_split: str = "train") -> tuple[str, str, str]:
    """'x.jsonl' -> ("groups", path, ""); a mining output dir -> ("mined", DIR, "");
    'miracl:ROOT:LANG[:split]' -> ("miracl", "ROOT:LANG", split); 'DIR[:split]' -> ("beir", DIR, split).

    Without an explicit split, a directory named like one of its qrels files (data/xquad_r/en/test)
    uses that split, else `default_split`.
    """
    if spec.endswith((".jsonl", ".jsonl.gz")):
        return "groups", spec, ""
    if spec.startswith("miracl:"):
        _, root, lang, *split = spec.split(":")
        return "miracl", f"{root}:{lang}", (split[0] if split else "dev")
    if os.path.exists(os.path.join(spec, "manifest.json")) and not os.path.exists(
        os.path.join(spec, "corpus.jsonl")
    ):
        return "mined", spec, ""
    path, _, split = spec.partition(":")
    if not split:
        base = os.path.basename(os.path.normpath(path))
        split = (
            base if os.path.exists(os.path.join(path, "qrels", f"{base}.tsv")) else default_split
        )
    return "beir", path, split


def load_dataset(kind: str, path: str, split: str, strict: bool = True):
    """A BEIR or MIRACL dataset named by `parse_source`."""
    if kind == "miracl":
        from querit_jax.data.miracl import load_miracl

        root, lang = path.rsplit(":", 1)
        return load_miracl(root, lang, split, strict)
    return beir.load_beir(path, split, strict=strict)


def dataset_name(path: str, split: str) -> str:
    """A short display name: the directory (and its parent when the directory is the split)."""
    norm = os.path.normpath(path)
    base = os.path.basename(norm)
    if base == split:
        return f"{os.path.basename(os.path.dirname(norm))}/{split}"
    return f"{base}:{split}"


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
            from querit_jax.mining.miner import shard_files

            found = [
                g
                for path in shard_files(src)
                for g in groups.read_groups(path, data_cfg.strict, report)
            ]
        else:
            ds = load_dataset(kind, src, split, data_cfg.strict)
            report = ds.report
            retriever = None
            if data_cfg.negatives == "bm25":
                doc_ids = sorted(ds.corpus)
                retriever = BM25Retriever(
                    doc_ids, [ds.doc_text(d) for d in doc_ids], SubwordAnalyzer(tokenizer)
                )
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
