"""Label-free training data: synthetic queries -> filters -> first-stage candidates -> teacher soft labels.

For a target corpus (a BEIR directory of which only `corpus.jsonl` is read) the miner:

  1. takes the source documents (all, or a seeded sample), cuts over-long ones (counted) and skips
     empty ones (counted);
  2. asks the generator for queries (prompt preset or custom text; `<|begin_of_query|>...` markers,
     generations without them are counted as malformed);
  3. filters them: length, copied-from-document, round trip (the source must be in the first stage's
     top-k), then normalised dedupe across the whole run;
  4. retrieves candidates with the first stage over the *whole* target corpus and lets the teacher
     score the source document and every candidate;
  5. writes one training group per query, FlagEmbedding schema plus teacher scores:
     {"qid", "query", "pos": [source], "neg": [...], "pos_scores", "neg_scores", "source_doc"}.

Work is cut into shards of `shard_size` source documents. Each shard file is written atomically
(temporary file + rename) and then recorded, with its counts and timing, in `manifest.json`, which
also records the inputs (with content hashes), generator, prompt, retriever, teacher and filters. A
rerun skips every shard recorded in the manifest (rebuilding the dedupe set from its file), so an
interrupted run -- even one killed with SIGKILL -- continues where it stopped and produces exactly
the shards of an uninterrupted run; a shard written but not yet recorded is mined again.
"""

import dataclasses
import glob
import json
import os
import time
import zlib
from collections import Counter

import numpy as np

from querit_jax.data import beir
from querit_jax.data.io import (
    ReadReport,
    fingerprint,
    iter_jsonl,
    read_json,
    write_json,
    write_jsonl,
)
from querit_jax.data.mined import MANIFEST, SHARD, is_complete, shard_files  # noqa: F401
from querit_jax.data.prompts import make_prompt, parse_queries
from querit_jax.errors import MiningError
from querit_jax.loading import build_retriever, load_teacher
from querit_jax.mining.filters import QueryFilter, normalize
from querit_jax.mining.generators import HeuristicGenerator, SamplingConfig
from querit_jax.mining.negatives import choose_by_bins


def _signature(cfg, corpus_path) -> dict:
    """What makes two runs produce the same shards (a resumed run must match it)."""
    settings = dataclasses.asdict(cfg)
    for volatile in ("output", "concurrency", "timeout_s", "max_retries", "teacher_batch_size"):
        settings.pop(volatile)
    # As stored in JSON (tuples become lists), so it compares equal to a manifest's copy.
    return json.loads(json.dumps({"settings": settings, "corpus_sha256": fingerprint(corpus_path)}))


def corpus_paths(target: str) -> list[str]:
    """The corpus files of a BEIR directory (corpus.jsonl) or a MIRACL root (corpus/*.jsonl.gz)."""
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if os.path.exists(os.path.join(target, name)):
            return [os.path.join(target, name)]
    if os.path.isdir(os.path.join(target, "corpus")):
        from querit_jax.data.miracl import corpus_files

        return corpus_files(target)
    raise FileNotFoundError(
        f"mining.target {target}: no corpus.jsonl(.gz) (BEIR) nor corpus/ (MIRACL)."
    )


def load_target(cfg) -> tuple[dict[str, str], ReadReport]:
    """{doc id: text} of the target corpus; empty documents are skipped and counted."""
    report = ReadReport()
    paths = corpus_paths(cfg.target)  # a clear error when the target has no corpus
    if os.path.samefile(os.path.dirname(paths[0]), cfg.target):  # BEIR: one corpus.jsonl(.gz)
        corpus = beir.load_corpus(paths[0], strict=False, report=report)
    else:  # MIRACL: several files; an id repeated across files is reported, the first copy kept
        from querit_jax.data.miracl import load_miracl_corpus

        corpus = load_miracl_corpus(cfg.target, strict=False, report=report)
    return {
        d: f"{doc.get('title', '')} {doc.get('text', '')}".strip() for d, doc in corpus.items()
    }, report


def build_generator(cfg, texts: list[str], num_queries: int):
    if cfg.generator == "heuristic":
        return HeuristicGenerator(texts, num_queries, cfg.heuristic_min_len, cfg.heuristic_max_len)
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    if cfg.generator == "jax":
        from querit_jax.mining.jax_sampler import JaxSampler

        return JaxSampler(cfg.generator_model, sampling)
    from querit_jax.mining.openai_client import OpenAIChatGenerator

    return OpenAIChatGenerator(
        cfg.endpoint,
        cfg.generator_model,
        sampling,
        api_key_env=cfg.api_key_env,
        concurrency=cfg.concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
    )


class Miner:
    """Holds the corpus, generator, retriever, teacher and filter state of one mining run."""

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.corpus, self.read_report = load_target(cfg)
        self.doc_ids = list(self.corpus)
        self.signature = _signature(cfg, corpus_paths(cfg.target))
        self.teacher = load_teacher(
            cfg.teacher, cfg.teacher_batch_size, cfg.teacher_max_length or None
        )
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(self.doc_ids)) if cfg.max_docs else np.arange(len(self.doc_ids))
        self.sources = [self.doc_ids[i] for i in order[: cfg.max_docs or len(order)]]
        self.prompt = make_prompt(cfg.prompt, cfg.num_queries or None, cfg.prompt_text or None)
        self.generator = build_generator(
            cfg, [self.corpus[d] for d in self.doc_ids], self.prompt.num_queries
        )
        self.retriever = build_retriever(
            cfg.first_stage,
            self.doc_ids,
            [self.corpus[d] for d in self.doc_ids],
            cfg.bm25_tokenizer,
            progress=False,
        )
        self.filter = QueryFilter(cfg.min_query_chars, cfg.max_query_chars, cfg.max_copy_overlap)
        self.seen: set[str] = set()

    def _source_text(self, doc_id: str, counts: Counter) -> str:
        text = self.corpus[doc_id]
        if len(text) > self.cfg.max_doc_chars:
            counts["truncated_documents"] += 1
            text = text[: self.cfg.max_doc_chars]
        return text

    def mine_shard(self, index: int, doc_ids: list[str]) -> tuple[list[dict], Counter]:
        cfg, counts = self.cfg, Counter()
        texts = [self._source_text(d, counts) for d in doc_ids]
        seeds = [cfg.seed * 1_000_003 + index * cfg.shard_size + i for i in range(len(doc_ids))]
        generations = self.generator.generate([self.prompt.render(t) for t in texts], texts, seeds)
        pending = []
        for doc_id, text, gen in zip(doc_ids, texts, generations):
            queries = parse_queries(gen)
            if not queries:
                counts["malformed_generations"] += 1
                continue
            counts["generated_queries"] += len(queries)
            pending += [(doc_id, q) for q in queries if self.filter.keep(q, text)]
        hits = (
            self.retriever.search_texts([q for _, q in pending], cfg.candidates) if pending else []
        )
        groups = []
        for (doc_id, query), ranked in zip(pending, hits):
            ranked_ids = [d for d, _ in ranked]
            if cfg.round_trip_k and doc_id not in ranked_ids[: cfg.round_trip_k]:
                counts["dropped_round_trip"] += 1
                continue
            norm = normalize(query)
            if cfg.dedupe and norm in self.seen:
                counts["dropped_duplicate"] += 1
                continue
            negatives = [d for d in ranked_ids if d != doc_id]
            if not negatives:
                counts["dropped_no_candidates"] += 1
                continue
            # Only kept queries enter the dedupe set: a resumed run rebuilds it from written rows.
            self.seen.add(norm)
            groups.append(
                {
                    "qid": f"{doc_id}#q{len(groups)}",
                    "query": query,
                    "source_doc": doc_id,
                    "negatives": negatives,
                }
            )
        self._label(groups, counts)
        counts.update({k: v for k, v in self.filter.counts.items() if k != "kept"})
        self.filter.counts.clear()
        counts["groups"] = len(groups)
        return groups, counts

    def _label(self, groups: list[dict], counts: Counter) -> None:
        """Teacher scores for each group's source and candidates; picks the negatives kept."""
        cfg = self.cfg
        pairs_q, pairs_d = [], []
        for g in groups:
            for d in [g["source_doc"], *g["negatives"]]:
                pairs_q.append(g["query"])
                pairs_d.append(self.corpus[d])
        scores = self.teacher.score(pairs_q, pairs_d) if pairs_q else np.zeros(0)
        counts["teacher_pairs"] += len(pairs_q)
        offset = 0
        for g in groups:
            n = 1 + len(g["negatives"])
            s = scores[offset : offset + n]
            offset += n
            neg_ids, neg_scores = g.pop("negatives"), s[1:]
            if cfg.score_bins > 1:
                rng = np.random.default_rng(
                    zlib.crc32(g["qid"].encode())
                )  # stable across processes
                pick = choose_by_bins(neg_scores, cfg.num_negatives, cfg.score_bins, rng)
            else:
                pick = list(range(min(cfg.num_negatives, len(neg_ids))))
            g.update(
                pos=[self.corpus[g["source_doc"]]],
                neg=[self.corpus[neg_ids[i]] for i in pick],
                pos_scores=[float(s[0])],
                neg_scores=[float(neg_scores[i]) for i in pick],
                neg_ids=[neg_ids[i] for i in pick],
            )

    def run(self) -> dict:
        """Mines every unfinished shard; returns the manifest (also written to output/manifest.json)."""
        cfg = self.cfg
        os.makedirs(cfg.output, exist_ok=True)
        manifest_path = os.path.join(cfg.output, "manifest.json")
        manifest = read_json(manifest_path) if os.path.exists(manifest_path) else {}
        if manifest and manifest.get("signature") != self.signature:
            raise MiningError(
                f"{cfg.output} holds shards of a different mining run (settings or corpus changed); "
                "use another mining.output or delete that directory."
            )
        for stale in glob.glob(os.path.join(cfg.output, "*.tmp-*")):
            os.remove(stale)  # half-written files of a killed run
        manifest.update(
            signature=self.signature, inputs=self._inputs(), shards=manifest.get("shards", {})
        )
        shards = [
            self.sources[i : i + cfg.shard_size]
            for i in range(0, len(self.sources), cfg.shard_size)
        ]
        for index, doc_ids in enumerate(shards):
            path = os.path.join(cfg.output, SHARD.format(index))
            if os.path.exists(path) and str(index) in manifest["shards"]:
                for _, row in iter_jsonl(path):  # finished: only rebuild the dedupe set
                    self.seen.add(normalize(row["query"]))
                continue
            start = time.time()
            groups, counts = self.mine_shard(index, doc_ids)
            write_jsonl(path, groups)
            manifest["shards"][str(index)] = {
                "file": os.path.basename(path),
                "documents": len(doc_ids),
                "counts": dict(counts),
                "seconds": round(time.time() - start, 2),
            }
            write_json(manifest_path, manifest)
            self.log(
                f"mined shard {index + 1}/{len(shards)}: {counts['groups']} groups ({dict(counts)})"
            )
        totals = Counter()
        for shard in manifest["shards"].values():
            totals.update(shard["counts"])
        manifest.update(
            complete=True,
            totals=dict(totals),
            source_documents=len(self.sources),
            skipped_documents=self.read_report.skipped,
            skipped_reasons=self.read_report.reasons[:5],
        )
        write_json(manifest_path, manifest)
        return manifest

    def _inputs(self) -> dict:
        cfg = self.cfg
        return {
            "target": os.path.abspath(cfg.target),
            "generator": {
                "kind": cfg.generator,
                "model": cfg.generator_model,
                "endpoint": cfg.endpoint,
            },
            "prompt": self.prompt.to_dict(),
            "retriever": {
                "first_stage": cfg.first_stage,
                "bm25_tokenizer": cfg.bm25_tokenizer,
                "candidates": cfg.candidates,
            },
            "teacher": self.teacher.describe(),
            "filters": {
                "min_chars": cfg.min_query_chars,
                "max_chars": cfg.max_query_chars,
                "max_copy_overlap": cfg.max_copy_overlap,
                "round_trip_k": cfg.round_trip_k,
                "dedupe": cfg.dedupe,
            },
        }


def up_to_date(cfg) -> bool:
    """Whether `cfg.output` holds a complete run of exactly this configuration (loads no model)."""
    path = os.path.join(cfg.output, "manifest.json")
    if not os.path.exists(path):
        return False
    manifest = read_json(path)
    return bool(manifest.get("complete")) and manifest.get("signature") == _signature(
        cfg, corpus_paths(cfg.target)
    )


def ensure_mined(cfg, log=print) -> None:
    """Mines `cfg.output` unless it already holds this exact run (a different run is an error).

    With several processes, process 0 mines while the others wait; a process that then does not see
    the finished run (per-host disks) mines its own identical copy.
    """
    import jax
    from jax.experimental import multihost_utils

    multi = jax.process_count() > 1
    if not multi or jax.process_index() == 0:
        if not up_to_date(cfg):
            mine(cfg, log)
    if multi:
        multihost_utils.sync_global_devices("querit_jax mining done")
        if jax.process_index() != 0 and not up_to_date(cfg):
            mine(cfg, log)


def mine(cfg, log=print) -> dict:
    return Miner(cfg, log).run()
